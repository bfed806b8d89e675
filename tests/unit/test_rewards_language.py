import pytest

from grpokit.rewards.base import Sample
from grpokit.rewards.language import build_language, script_share, target_script


@pytest.mark.parametrize(
    "text, target, expected",
    [
        ("hello world", "en", 1.0),
        ("hello 世界", "en", 5 / 7),
        ("hello 世界", "zh", 2 / 7),
        ("hello 世界", "cjk", 2 / 7),
        ("ひらがなと漢字", "ja", 1.0),
        ("ひらがなと漢字", "zh", 2 / 7),
        ("привет world", "ru", 6 / 11),
        ("ｈｅｌｌｏ", "latin", 1.0),
        ("x = 42 + 7!", "latin", 1.0),
        ("42 + 7", "latin", 0.0),
        ("", "latin", 0.0),
        ("  \n", "latin", 0.0),
    ],
)
def test_script_share(text, target, expected):
    assert script_share(text, target_script(target)) == pytest.approx(expected)


def test_target_from_row_and_missing():
    fn = build_language()
    assert fn([Sample("abc", {"language": "en"}), Sample("abc", {})]) == [1.0, None]


def test_unknown_target():
    with pytest.raises(ValueError, match="unknown target 'klingon'.*latin"):
        build_language(target="klingon")
    with pytest.raises(ValueError, match="id=3.*field 'language'"):
        build_language()([Sample("abc", {"id": 3, "language": "klingon"})])
