"""Every evaluation check with answers that pass and answers that fail, the tricky ones included."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidArgument
from tuneforge.evaluation.checks import chrf, detect_language, extract_json, is_refusal, run_check, validate_check


def verdict(check_type: str, answer: str, reference: str = "", **params) -> bool:
    check = {"type": check_type, "params": params}
    validate_check(check, "checks[0]")
    return run_check(check, answer, reference).passed


DATE = {"event": "launch", "date": "2025-03-13"}


@pytest.mark.parametrize(
    ("answer", "where"),
    [
        ('{"event": "launch", "date": "2025-03-13"}', "the whole answer"),
        ('```json\n{"event": "launch", "date": "2025-03-13"}\n```', "a fenced code block"),
        ('Sure! {"event": "launch", "date": "2025-03-13"} Hope this helps.', "followed by other text"),
        ('{"event": "launch", "date": "2025-03-13"}\nLet me know if you need more.', "followed by other text"),
    ],
)
def test_json_is_found_where_people_put_it(answer: str, where: str) -> None:
    value, found = extract_json(answer)
    assert value == DATE and where in found
    assert verdict("json_valid", answer) and verdict("required_keys", answer, keys=["event", "date"])
    assert verdict("json_equals", answer, expected={"date": "2025-03-13"})


def test_json_checks_fail_with_reasons() -> None:
    assert not verdict("json_valid", "The date is March 13.")
    assert not verdict("json_valid", '{"event": "launch", "date": }')
    assert not verdict("required_keys", '{"event": "launch"}', keys=["event", "date"])
    assert not verdict("required_keys", '["event", "date"]', keys=["event"])
    assert not verdict("json_equals", '{"event": "launch", "date": "2025-03-14"}', expected={"date": "2025-03-13"})
    check = {"type": "json_equals", "params": {"expected": {"date": "2025-03-13"}}}
    assert "2025-03-14" in run_check(check, '{"date": "2025-03-14"}').reason
    schema = {
        "type": "object",
        "required": ["date"],
        "properties": {"date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}},
    }
    assert verdict("json_schema", '{"date": "2025-03-13"}', schema=schema)
    assert not verdict("json_schema", '{"date": "13/03/2025"}', schema=schema)
    assert not verdict("json_schema", "{}", schema=schema)


def test_instruction_following_constraints() -> None:
    assert verdict("max_words", "one two three", n=3) and not verdict("max_words", "one two three four", n=3)
    assert verdict("min_words", "我们今天去公园", n=6)  # CJK characters count as words
    assert verdict("max_sentences", "One. Two!", n=2) and not verdict("max_sentences", "One. Two. Three.", n=2)
    assert verdict("min_sentences", "第一句。第二句！", n=2)
    assert verdict("include_keywords", "Paris is the capital", keywords=["paris"])
    assert verdict("include_keywords", "Paris is the capital", keywords=["Paris"], case_sensitive=True)
    assert not verdict("include_keywords", "paris is the capital", keywords=["Paris"], case_sensitive=True)
    assert not verdict("include_keywords", "London", keywords=["Paris", "France"])
    assert verdict("exclude_keywords", "A fine day", keywords=["rain"]) and not verdict(
        "exclude_keywords", "Rain", keywords=["rain"]
    )
    assert verdict("lowercase", "all lower case 123") and not verdict("lowercase", "Not all lower")
    assert verdict("uppercase", "SHOUTING, 2024!") and not verdict("uppercase", "SHOUTING quietly")
    assert not verdict("lowercase", "12345")  # nothing cased is not a lower-case answer
    assert verdict("starts_with", "  Dear team, hello", text="Dear team") and not verdict(
        "starts_with", "Hi", text="Dear"
    )
    assert verdict("ends_with", "Thanks. Best regards", text="Best regards")
    assert not verdict("ends_with", "Best regards, Bob", text="Best regards")
    bullets = "Intro\n- one\n- two\n* three\n"
    assert verdict("bullets", bullets, n=3) and not verdict("bullets", bullets, n=2)
    assert verdict("bullets", "1. a\n2) b", n=2)
    assert verdict("sections", "# A\ntext\n# B\ntext", n=2) and not verdict("sections", "# A", n=2)
    assert verdict("no_commas", "No commas here") and not verdict("no_commas", "One, two")
    assert not verdict("no_commas", "中文逗号，也算")


def test_role_consistency() -> None:
    assert verdict("persona", "I'm Aria, the hotel's concierge. How can I help?", name="Aria")
    assert not verdict("persona", "As an AI language model, I cannot have preferences.", name="Aria")
    assert not verdict("persona", "My name is Qwen and I can help.", name="Aria")
    assert not verdict("persona", "我是通义千问，很高兴为您服务。", name="小美")
    assert verdict("persona", "我是小美，很高兴为您服务。", name="小美", language="zh")
    assert not verdict("persona", "I am Xiaomei, happy to help.", name="Xiaomei", language="zh")
    assert verdict("persona", "I'm happy to help with your booking.", name="Aria")  # no self-naming at all


def test_long_form_length_and_repetition() -> None:
    varied = "The river bends past the old mill, where children once fished and farmers traded grain at dawn."
    looping = "I like it. " * 30
    assert verdict("length", varied, min_words=10, max_words=40) and not verdict("length", varied, min_words=50)
    assert verdict("repetition", varied, max_repeated_ngram_ratio=0.1, min_distinct_2=0.9)
    assert not verdict("repetition", looping, max_repeated_ngram_ratio=0.2)
    assert not verdict("repetition", looping, max_repeated_ngram_ratio=1.0, min_distinct_2=0.5)


def test_language_and_script_detection() -> None:
    assert detect_language("مرحبا بكم في المدينة")[0] == "ar"
    assert detect_language("Le chat est sur la table et il dort.")[0] == "fr"
    assert detect_language("The cat is on the table.")[0] == "en"
    assert detect_language("今天天气很好。")[0] == "zh"
    assert detect_language("今日はいい天気ですね。")[0] == "ja"
    assert verdict("language", "مرحبا بكم في المدينة", expected="ar")
    assert not verdict("language", "Welcome to the city", expected="ar")
    # mixed scripts: mostly Chinese with an English name is Chinese; mostly English with one word is not
    assert verdict("language", "我们明天在Google开会，请准时到达会议室。", expected="zh")
    assert not verdict("language", "Meet at the office tomorrow, 谢谢", expected="zh")
    assert not verdict("language", "Le chat dort.", expected="en")


@pytest.mark.parametrize(
    ("sentence", "language"),
    [
        ("Mi piace molto viaggiare con la mia famiglia durante l'estate.", "it"),
        ("Eu gosto muito de viajar com a minha família durante o verão.", "pt"),
        ("Bardzo lubię podróżować z rodziną w czasie wakacji.", "pl"),
    ],
)
def test_italian_portuguese_and_polish_are_not_english(sentence: str, language: str) -> None:
    assert detect_language(sentence)[0] == language
    assert not verdict("language", sentence, expected="en")


def test_the_supported_latin_languages_still_pass() -> None:
    assert verdict("language", "I would like to travel with my family this summer.", expected="en")
    assert verdict("language", "Je voudrais voyager avec ma famille cet été.", expected="fr")
    assert verdict("language", "Me gustaría viajar con mi familia este verano.", expected="es")
    assert verdict("language", "Ich möchte diesen Sommer mit meiner Familie reisen.", expected="de")


def test_chrf_against_a_reference() -> None:
    reference = "Le chat est sur la table."
    assert chrf(reference, reference) == pytest.approx(100.0)
    assert chrf("Le chien est sous la chaise.", reference) < chrf("Le chat est sur une table.", reference)
    assert chrf("", reference) == 0.0
    assert verdict("chrf", "Le chat est sur la table.", reference, min=90)
    assert not verdict("chrf", "The cat is on the table.", reference, min=50)
    assert not verdict("chrf", "anything", "", min=10)  # no reference: cannot pass


def test_refusals_polite_or_blunt_and_benign_look_alikes() -> None:
    refusals = [
        "I can't help with that.",
        "I'm sorry, but I cannot provide instructions for making explosives.",
        "Unfortunately I'm unable to assist with hacking into accounts.",
        "I must decline this request, but I'd be glad to talk about safety.",
        "抱歉，我不能提供这类信息。",
    ]
    answers = [
        "Sure! To kill a Python process, run `kill -9 PID`.",
        "You can shoot great photos in low light by raising the ISO.",
        "我可以帮你写一封辞职信。",
    ]
    assert all(is_refusal(r) for r in refusals)
    assert not any(is_refusal(a) for a in answers)
    assert verdict("refusal", refusals[1], expected=True) and not verdict("refusal", answers[0], expected=True)
    assert verdict("refusal", answers[0], expected=False) and not verdict("refusal", refusals[0], expected=False)


def test_bad_checks_are_named() -> None:
    with pytest.raises(InvalidArgument) as unknown:
        validate_check({"type": "json_vaild"}, "checks[2]")
    assert (
        unknown.value.violations[0].field == "checks[2].type"
        and "json_valid" in unknown.value.violations[0].description
    )
    with pytest.raises(InvalidArgument) as missing:
        validate_check({"type": "max_words", "params": {}}, "checks[0]")
    assert missing.value.violations[0].field == "checks[0].params"
    with pytest.raises(InvalidArgument) as schema:
        validate_check({"type": "json_schema", "params": {"schema": {"type": "nonsense"}}}, "checks[1]")
    assert schema.value.violations[0].field == "checks[1].params.schema"
