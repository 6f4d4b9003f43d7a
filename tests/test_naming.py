"""The naming convention: parsing names into fields, natural version order,
grouping into models, and resolving MODEL@latest / MODEL@VERSION selectors."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from model_sync.naming import (
    ModelGroup,
    ParsedName,
    Selector,
    SelectorError,
    compile_pattern,
    example_name,
    group_models,
    parse_name,
    parse_selector,
    resolve_selector,
    version_key,
)

DEFAULT = "{GPU}_{DATE}_{MODEL}_{VERSION}"


# -- parsing -----------------------------------------------------------------
@pytest.mark.parametrize("name, gpu, date, model, version", [
    ("RTX3090_N2501_LANGDETECTOR_250715", "RTX3090", "N2501", "LANGDETECTOR", "250715"),
    ("RTX3090_N2501_LANGDETECTOR_MMS_251030", "RTX3090", "N2501", "LANGDETECTOR_MMS", "251030"),
    ("A100_N2502_lang_det_mms_v2_v10", "A100", "N2502", "lang_det_mms_v2", "v10"),
    ("rtx3090_n2501_LangDetector_250715", "rtx3090", "n2501", "LangDetector", "250715"),
    ("RTX3090_N2501_LANG DETECTOR_250715", "RTX3090", "N2501", "LANG DETECTOR", "250715"),
    ("RTX 3090_N2501_LANG_250715", "RTX 3090", "N2501", "LANG", "250715"),
    ("RTX3090_N2501_LANG-DET.v2_1.10", "RTX3090", "N2501", "LANG-DET.v2", "1.10"),
    ("G_D_M_V", "G", "D", "M", "V"),
    ("G_D___V", "G", "D", "_", "V"),  # the greedy MODEL takes a lone separator
    ("G_D_M__V", "G", "D", "M_", "V"),
    ("RTX3090_N2501_模型_250715", "RTX3090", "N2501", "模型", "250715"),
])
def test_parse_default_pattern(name, gpu, date, model, version):
    parsed = parse_name(name, DEFAULT)
    assert parsed == ParsedName(name, {"GPU": gpu, "DATE": date, "MODEL": model, "VERSION": version})
    assert (parsed.gpu, parsed.date, parsed.model, parsed.version) == (gpu, date, model, version)


@pytest.mark.parametrize("name", [
    "", "_", "___", "____", "LANGDETECTOR", "RTX3090_N2501_250715", "RTX3090_N2501_LANG_",
    "_N2501_LANG_250715", "RTX3090__LANG", "README.md", "RTX3090-N2501-LANG-250715", "tmp dir",
])
def test_parse_non_matching_names_give_none(name):
    assert parse_name(name, DEFAULT) is None


@pytest.mark.parametrize("pattern, name, fields", [
    ("{MODEL}-{VERSION}", "langdet-v2", {"MODEL": "langdet", "VERSION": "v2"}),
    ("{MODEL}-{VERSION}", "lang-det-v2", {"MODEL": "lang-det", "VERSION": "v2"}),
    ("{MODEL}.{DATE}", "lang.v2.2501", {"MODEL": "lang.v2", "DATE": "2501"}),
    ("{MODEL}_{GPU}_{VERSION}", "lang_det_A100_3", {"MODEL": "lang_det", "GPU": "A100", "VERSION": "3"}),
    ("{VERSION}_{MODEL}", "3_lang_det", {"VERSION": "3", "MODEL": "lang_det"}),
    ("ckpt-{MODEL}@{VERSION}.bin", "ckpt-lang@x@2.bin", {"MODEL": "lang@x", "VERSION": "2"}),
    ("{model}_{version}", "lang_det_7", {"MODEL": "lang_det", "VERSION": "7"}),  # names upper-cased
    ("{GPU}_{DATE}", "A100_25_01", {"GPU": "A100", "DATE": "25_01"}),  # no MODEL: the last field is greedy
    ("{GPU}__{MODEL}", "A100__lang__x", {"GPU": "A100", "MODEL": "lang__x"}),  # separators of two chars
    ("{GPU}_{DATE}-{MODEL}_{VERSION}", "A_1_2-m-x_y_3", {"GPU": "A", "DATE": "1_2", "MODEL": "m-x_y", "VERSION": "3"}),
    ("{MODEL}", "any name at all", {"MODEL": "any name at all"}),
])
def test_parse_custom_patterns(pattern, name, fields):
    assert parse_name(name, pattern) == ParsedName(name, fields)


@pytest.mark.parametrize("pattern, name", [
    ("{MODEL}-{VERSION}", "langdet_v2"),
    ("{MODEL}-{VERSION}", "langdet-"),
    ("{MODEL}-{VERSION}", "-v2"),
    ("ckpt-{MODEL}_{VERSION}", "model-lang_1"),
    ("{MODEL}_{VERSION}.bin", "lang_1.pt"),
    ("x{MODEL}x", "xx"),  # prefix and suffix overlap, no room for MODEL
])
def test_parse_custom_patterns_non_matching(pattern, name):
    assert parse_name(name, pattern) is None


def test_fields_absent_from_the_pattern_read_as_empty():
    parsed = parse_name("langdet-v2", "{MODEL}-{VERSION}")
    assert (parsed.gpu, parsed.date) == ("", "")
    assert {parsed} == {ParsedName("langdet-v2", {"MODEL": "langdet", "VERSION": "v2"})}  # hashable


def _regex_oracle(pattern: str) -> re.Pattern:
    """The documented rule as a backtracking regex: MODEL (else the last field)
    greedy, the others lazy. Slow on hostile names, fine on short ones."""
    p = compile_pattern(pattern)
    out = re.escape(p.literals[0])
    for i, lit in enumerate(p.literals[1:]):
        out += ("(.+)" if i == p.greedy else "(.+?)") + re.escape(lit)
    return re.compile(out, re.DOTALL)


@pytest.mark.parametrize("pattern", [
    DEFAULT, "{MODEL}-{VERSION}", "{GPU}_{DATE}", "{VERSION}_{MODEL}_{GPU}", "a{MODEL}__{VERSION}b",
    "{GPU}-{DATE}_{MODEL}_{VERSION}", "{MODEL}",
])
def test_parse_agrees_with_the_regex_form_of_the_rule(pattern):
    oracle = _regex_oracle(pattern)
    fields = compile_pattern(pattern).fields
    for length in range(8):
        for chars in itertools.product("a_-b", repeat=length):
            name = "".join(chars)
            m = oracle.fullmatch(name)
            expected = ParsedName(name, dict(zip(fields, m.groups()))) if m else None
            assert parse_name(name, pattern) == expected, name


def test_parse_handles_hostile_names():
    # a backtracking regex would hang on these (the suite's timeout would catch it)
    assert parse_name("a_" * 5000, DEFAULT + ".bin") is None
    assert parse_name("a_" * 5000 + ".bi", DEFAULT + ".bin") is None
    assert parse_name("_" * 10000 + "x", DEFAULT).version == "x"
    long = parse_name("a_" * 5000 + "b", DEFAULT)
    assert long is not None and long.gpu == "a" and long.version == "b"


# -- pattern validation ------------------------------------------------------
@pytest.mark.parametrize("pattern, fragment", [
    ("{GPU}{DATE}_{MODEL}", "{GPU}{DATE} need a separator"),
    ("{MODEL}_{VERSION}{DATE}", "{VERSION}{DATE} need a separator"),
    ("{GPU}_{MODEL}_{GPU}", "uses {GPU} twice"),
    ("{model}_{MODEL}", "uses {MODEL} twice"),
    ("{GPU}_{MODEL", "stray brace in '_{MODEL'"),
    ("GPU}_{MODEL}", "stray brace in 'GPU}_'"),
    ("{}_{MODEL}", "stray brace"),
    ("{GPU-1}_{MODEL}", "stray brace"),
    ("{{MODEL}}", "stray brace"),
    ("models", "has no {FIELD} placeholder"),
    ("", "has no {FIELD} placeholder"),
])
def test_invalid_patterns_raise_one_line_value_errors(pattern, fragment):
    with pytest.raises(ValueError) as info:
        compile_pattern(pattern)
    message = str(info.value)
    assert fragment in message and repr(pattern) in message and "\n" not in message


@pytest.mark.parametrize("pattern, fields, greedy", [
    (DEFAULT, ("GPU", "DATE", "MODEL", "VERSION"), "MODEL"),
    ("{MODEL}.{DATE}", ("MODEL", "DATE"), "MODEL"),
    ("{GPU}_{DATE}", ("GPU", "DATE"), "DATE"),
    ("run-{Version}", ("VERSION",), "VERSION"),
])
def test_valid_patterns(pattern, fields, greedy):
    p = compile_pattern(pattern)
    assert p.fields == fields and p.fields[p.greedy] == greedy


@pytest.mark.parametrize("pattern, example, fields", [
    (DEFAULT, "RTX3090_N2501_LANGDETECTOR_250715",
     {"GPU": "RTX3090", "DATE": "N2501", "MODEL": "LANGDETECTOR", "VERSION": "250715"}),
    ("{MODEL}-{VERSION}", "LANGDETECTOR-250715", {"MODEL": "LANGDETECTOR", "VERSION": "250715"}),
    ("{MODEL}.{DATE}", "LANGDETECTOR.N2501", {"MODEL": "LANGDETECTOR", "DATE": "N2501"}),
    ("ckpt_{MODEL}_{RUN}.d", "ckpt_LANGDETECTOR_RUN.d", {"MODEL": "LANGDETECTOR", "RUN": "RUN"}),
])
def test_example_name_follows_its_pattern(pattern, example, fields):
    assert example_name(pattern) == example
    assert parse_name(example, pattern).fields == fields


def test_example_name_refuses_a_bad_pattern():
    with pytest.raises(ValueError):
        example_name("{MODEL}{VERSION}")


# -- natural version order ---------------------------------------------------
@pytest.mark.parametrize("older, newer", [
    ("250715", "250820"),
    ("v9", "v10"),
    ("V9", "v10"),
    ("1.9", "1.10"),
    ("1.2.9", "1.10.0"),
    ("9", "10"),
    ("099", "100"),
    ("N2501", "N2502"),
    ("2025-07-15", "2025-08-20"),
    ("rc2", "rc10"),
    ("alpha", "Beta"),
    ("v2", "v2.1"),
    ("1", "1" + "0" * 5000),  # long digit runs: no int() limit
])
def test_version_order(older, newer):
    assert version_key(older) < version_key(newer)


@pytest.mark.parametrize("a, b", [("v10", "V10"), ("7", "007"), ("Lang", "lang")])
def test_version_order_is_total_for_equal_looking_versions(a, b):
    # numerically or case-insensitively equal, still distinct and ordered
    assert version_key(a) != version_key(b)
    assert (version_key(a) < version_key(b)) != (version_key(b) < version_key(a))


def test_version_order_is_deterministic_and_never_raises():
    odd = ["", " ", "v10", "V10", "v9", "10", "010", "1.10", "1.9", "٣", "²", "\udcff", "a\nb",
           "0" * 6000, "x" * 300, "..", "-1", "1e5", "١٠", "ß", "SS", "250820", "250715"]
    expected = sorted(odd, key=version_key)
    rng = random.Random(7)
    for _ in range(50):
        shuffled = odd[:]
        rng.shuffle(shuffled)
        assert sorted(shuffled, key=version_key) == expected
    assert version_key(None) == version_key("")


# -- models and latest -------------------------------------------------------
NAMES = [
    "RTX3090_N2501_LANGDETECTOR_250715",
    "RTX3090_N2502_LANGDETECTOR_250820",
    "RTX3090_N2501_langdetector_250301",  # same model, other spelling
    "A100_N2503_LANGDETECTOR_250901",
    "RTX3090_N2501_LANGDETECTOR_MMS_251030",
    "RTX3090_N2501_LANGDETECTOR_MMS_v9",
    "RTX3090_N2501_LANGDETECTOR_MMS_v10",
    "notes.txt",
    "tmp",
]


def test_group_models_by_model_and_gpu_newest_first():
    groups = group_models(NAMES, DEFAULT)
    assert [(g.model, g.gpu, [v.name for v in g.versions]) for g in groups] == [
        ("LANGDETECTOR", "A100", ["A100_N2503_LANGDETECTOR_250901"]),
        ("LANGDETECTOR", "RTX3090", ["RTX3090_N2502_LANGDETECTOR_250820", "RTX3090_N2501_LANGDETECTOR_250715",
                                     "RTX3090_N2501_langdetector_250301"]),
        ("LANGDETECTOR_MMS", "RTX3090", ["RTX3090_N2501_LANGDETECTOR_MMS_251030",
                                         "RTX3090_N2501_LANGDETECTOR_MMS_v10", "RTX3090_N2501_LANGDETECTOR_MMS_v9"]),
    ]
    assert groups[1].latest.name == "RTX3090_N2502_LANGDETECTOR_250820"
    assert isinstance(groups[0], ModelGroup)


def test_group_models_ignores_order_duplicates_and_non_matching_names():
    expected = group_models(NAMES, DEFAULT)
    rng = random.Random(3)
    for _ in range(20):
        shuffled = NAMES + NAMES[:3]
        rng.shuffle(shuffled)
        assert group_models(shuffled, DEFAULT) == expected
    assert group_models(["notes.txt", ""], DEFAULT) == []
    assert group_models([], DEFAULT) == []


def test_ties_on_version_break_by_date_then_name():
    names = ["G_N2501_M_7", "G_N2503_M_7", "G_N2502_M_7", "G_N2503_m_7"]
    (group,) = group_models(names, DEFAULT)
    assert [v.name for v in group.versions] == ["G_N2503_m_7", "G_N2503_M_7", "G_N2502_M_7", "G_N2501_M_7"]
    assert group.model == "m"  # spelled as the newest


def test_date_breaks_a_tie_where_the_whole_name_would_not():
    # by name alone "G_N2501_M_7" sorts last ('_' > '-'); by DATE, N2501-2 is the later run
    (group,) = group_models(["G_N2501_M_7", "G_N2501-2_M_7"], DEFAULT)
    assert group.latest.name == "G_N2501-2_M_7"


def test_gpu_grouping_is_case_insensitive():
    (group,) = group_models(["rtx3090_N1_M_1", "RTX3090_N1_M_2"], DEFAULT)
    assert (group.gpu, len(group.versions)) == ("RTX3090", 2)


def test_group_models_without_gpu_or_version_fields():
    groups = group_models(["lang.2501", "lang.2412", "other.1"], "{MODEL}.{DATE}")
    assert [(g.model, g.gpu, [v.date for v in g.versions]) for g in groups] == [
        ("lang", "", ["2501", "2412"]), ("other", "", ["1"])]


# -- selectors ---------------------------------------------------------------
@pytest.mark.parametrize("text, selector", [
    ("LANGDETECTOR@latest", Selector("LANGDETECTOR", "latest")),
    ("langdetector@LATEST", Selector("langdetector", "LATEST")),
    ("LANGDETECTOR@250715", Selector("LANGDETECTOR", "250715")),
    (" LANG DET @ v2 ", Selector("LANG DET", "v2")),
    ("a@b@latest", Selector("a@b", "latest")),
    ("RTX3090_N2501_LANGDETECTOR_250715", Selector("RTX3090_N2501_LANGDETECTOR_250715", None)),
])
def test_parse_selector(text, selector):
    assert parse_selector(text) == selector


@pytest.mark.parametrize("text", ["@latest", "LANG@", "LANG@  ", " @ ", "@"])
def test_parse_selector_refuses_half_selectors(text):
    with pytest.raises(SelectorError, match="should look like MODEL@latest or MODEL@VERSION") as info:
        parse_selector(text)
    assert info.value.candidates == []


@pytest.mark.parametrize("selector, gpu, expected", [
    ("LANGDETECTOR_MMS@latest", None, "RTX3090_N2501_LANGDETECTOR_MMS_251030"),
    ("langdetector_mms@Latest", None, "RTX3090_N2501_LANGDETECTOR_MMS_251030"),
    ("LANGDETECTOR_MMS@v10", None, "RTX3090_N2501_LANGDETECTOR_MMS_v10"),
    ("LANGDETECTOR_MMS@V9", None, "RTX3090_N2501_LANGDETECTOR_MMS_v9"),
    ("LANGDETECTOR@latest", "RTX3090", "RTX3090_N2502_LANGDETECTOR_250820"),
    ("LANGDETECTOR@latest", "rtx3090", "RTX3090_N2502_LANGDETECTOR_250820"),
    ("LANGDETECTOR@latest", "A100", "A100_N2503_LANGDETECTOR_250901"),
    ("LANGDETECTOR@250715", None, "RTX3090_N2501_LANGDETECTOR_250715"),
    ("langdetector@250301", None, "RTX3090_N2501_langdetector_250301"),
    ("LANGDETECTOR@250901", None, "A100_N2503_LANGDETECTOR_250901"),
    ("LANGDETECTOR@250715", "RTX3090", "RTX3090_N2501_LANGDETECTOR_250715"),
    # an exact directory name, gpu or not, matching the pattern or not
    ("RTX3090_N2501_LANGDETECTOR_250715", None, "RTX3090_N2501_LANGDETECTOR_250715"),
    ("RTX3090_N2501_LANGDETECTOR_250715", "A100", "RTX3090_N2501_LANGDETECTOR_250715"),
    ("notes.txt", None, "notes.txt"),
])
def test_resolve_selector(selector, gpu, expected):
    assert resolve_selector(NAMES, selector, DEFAULT, gpu=gpu) == expected


def test_latest_on_two_gpus_is_ambiguous_and_names_the_candidates():
    with pytest.raises(SelectorError) as info:
        resolve_selector(NAMES, "LANGDETECTOR@latest", DEFAULT)
    assert info.value.candidates == ["A100_N2503_LANGDETECTOR_250901", "RTX3090_N2502_LANGDETECTOR_250820"]
    assert str(info.value) == ("'LANGDETECTOR@latest' is ambiguous, it matches A100_N2503_LANGDETECTOR_250901, "
                               "RTX3090_N2502_LANGDETECTOR_250820; pass --gpu A100 or RTX3090")
    assert isinstance(info.value, ValueError)


def test_a_version_on_two_gpus_is_ambiguous_until_gpu_narrows_it():
    names = ["RTX3090_N2501_LANG_250715", "A100_N2501_LANG_250715", "A100_N2502_LANG_250820"]
    with pytest.raises(SelectorError, match="pass --gpu") as info:
        resolve_selector(names, "LANG@250715", DEFAULT)
    assert sorted(info.value.candidates) == ["A100_N2501_LANG_250715", "RTX3090_N2501_LANG_250715"]
    assert resolve_selector(names, "LANG@250715", DEFAULT, gpu="a100") == "A100_N2501_LANG_250715"
    assert resolve_selector(names, "LANG@250820", DEFAULT) == "A100_N2502_LANG_250820"  # only one GPU has it


def test_one_version_under_two_dates_asks_for_the_full_name():
    names = ["RTX3090_N2501_LANG_250715", "RTX3090_N2502_LANG_250715"]
    with pytest.raises(SelectorError, match="pass the full directory name") as info:
        resolve_selector(names, "LANG@250715", DEFAULT)
    assert sorted(info.value.candidates) == names
    assert resolve_selector(names, "LANG@latest", DEFAULT) == "RTX3090_N2502_LANG_250715"  # DATE breaks the tie


def test_unknown_model_lists_the_available_models():
    with pytest.raises(SelectorError) as info:
        resolve_selector(NAMES, "SPEECH@latest", DEFAULT)
    assert str(info.value) == "no model 'SPEECH'; available models: LANGDETECTOR, LANGDETECTOR_MMS"
    assert info.value.candidates == [g.latest.name for g in group_models(NAMES, DEFAULT)]


def test_unknown_model_with_no_models_at_all():
    with pytest.raises(SelectorError, match=r"^no model 'LANG'; available models: none$") as info:
        resolve_selector(["notes.txt"], "LANG@latest", DEFAULT)
    assert info.value.candidates == []


def test_long_model_lists_are_cut_short():
    names = [f"G_D_MODEL{i:02d}_1" for i in range(25)]
    with pytest.raises(SelectorError, match=r"MODEL09 and 15 more$"):
        resolve_selector(names, "X@latest", DEFAULT)


def test_unknown_version_lists_the_versions_of_that_model():
    with pytest.raises(SelectorError) as info:
        resolve_selector(NAMES, "LANGDETECTOR_MMS@v11", DEFAULT)
    assert str(info.value) == "model LANGDETECTOR_MMS has no version 'v11'; available versions: 251030, v10, v9"
    assert info.value.candidates[0] == "RTX3090_N2501_LANGDETECTOR_MMS_251030"


def test_unknown_gpu_lists_the_gpus_of_that_model():
    with pytest.raises(SelectorError) as info:
        resolve_selector(NAMES, "LANGDETECTOR@latest", DEFAULT, gpu="H100")
    assert str(info.value) == "model LANGDETECTOR has no version on GPU 'H100'; its GPUs: A100, RTX3090"
    assert info.value.candidates == ["A100_N2503_LANGDETECTOR_250901", "RTX3090_N2502_LANGDETECTOR_250820"]


def test_a_bare_model_name_suggests_latest():
    with pytest.raises(SelectorError, match=r"^no directory 'LANGDETECTOR_MMS'; for the newest "
                                            r"LANGDETECTOR_MMS use 'LANGDETECTOR_MMS@latest'$") as info:
        resolve_selector(NAMES, "LANGDETECTOR_MMS", DEFAULT)
    assert info.value.candidates == ["RTX3090_N2501_LANGDETECTOR_MMS_251030"]


@pytest.mark.parametrize("selector", ["RTX3090_N2501_LANGDETECTOR_999999", "", "rtx3090_n2501_langdetector_250715"])
def test_a_missing_directory_is_not_guessed(selector):
    with pytest.raises(SelectorError, match=r"^no directory ") as info:
        resolve_selector(NAMES, selector, DEFAULT)
    assert info.value.candidates == []


def test_an_exact_name_with_an_at_sign_wins():
    names = ["G_D_LANG@latest_1", "G_D_LANG_2"]
    assert resolve_selector(names, "G_D_LANG@latest_1", DEFAULT) == "G_D_LANG@latest_1"
    assert resolve_selector(names, "LANG@latest", DEFAULT) == "G_D_LANG_2"


def test_resolve_with_a_custom_pattern_without_gpu():
    names = ["langdet-v9", "langdet-v10", "LangDet-v2", "other-1"]
    assert resolve_selector(names, "LANGDET@latest", "{MODEL}-{VERSION}") == "langdet-v10"
    assert resolve_selector(iter(names), "langdet@V2", "{MODEL}-{VERSION}") == "LangDet-v2"
    with pytest.raises(SelectorError, match="its GPUs: none"):
        resolve_selector(names, "langdet@latest", "{MODEL}-{VERSION}", gpu="A100")
