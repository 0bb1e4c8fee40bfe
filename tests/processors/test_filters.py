from processors.filters import FilterParams
from schemas.labels import Labels, Quality, Transcript

SPEECH = Labels(transcript=Transcript("hello", "manifest", language="de", disagreement=0.5),
                quality=Quality("m", snr_db=12.0, dnsmos_ovrl=2.4))


def test_every_filter_is_off_by_default():
    assert not FilterParams().active() and FilterParams().verdict(SPEECH, "speech") is None


def test_each_filter_says_why():
    assert FilterParams(min_dnsmos=3.0).verdict(SPEECH, "speech")[0] == "below_min_dnsmos"
    assert FilterParams(min_dnsmos=2.0).verdict(SPEECH, "speech") is None
    assert FilterParams(languages=["en", "fr"]).verdict(SPEECH, "speech")[0] == "language_not_allowed"
    assert FilterParams(languages=["de"]).verdict(SPEECH, "speech") is None
    assert FilterParams(max_transcript_disagreement=0.3).verdict(SPEECH, "speech")[0] == "transcript_disagreement"
    assert FilterParams(min_snr_db=20).verdict(SPEECH, "speech")[1] == "snr_db 12.0 < filters.min_snr_db 20"


def test_a_segment_without_the_label_passes():
    sound = Labels(quality=Quality("m", snr_db=30.0))
    f = FilterParams(min_dnsmos=3.0, languages=["en"], max_transcript_disagreement=0.1)
    assert f.verdict(sound, "sound") is None


def test_bad_settings_are_reported():
    assert len(FilterParams(min_dnsmos=7, max_transcript_disagreement=2).problems()) == 2
