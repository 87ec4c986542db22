"""Curation options: one model holds every default and range (#16 point 2); requests and the CLI set
only what they name."""

from __future__ import annotations

from tuneforge.cli import build_parser
from tuneforge.curation.pipeline import CurationOptions, parse_options
from tuneforge.curation.servicer import version_spec
from tuneforge.v1 import curation_pb2


def _request(**settings: object) -> curation_pb2.CreateDatasetVersionRequest:
    return curation_pb2.CreateDatasetVersionRequest(
        dataset="d", file_ids=["file-" + "a" * 24], settings=curation_pb2.CurationSettings(base_model="m", **settings)
    )


def test_a_request_that_sets_nothing_gets_the_model_s_defaults_and_the_service_s_invalid_share() -> None:
    spec = version_spec(_request(), max_invalid_fraction=0.25)
    assert spec.option_problems == ()
    assert spec.options == CurationOptions(max_invalid_fraction=0.25)
    assert version_spec(_request(max_invalid_fraction=0.0), max_invalid_fraction=0.25).options.max_invalid_fraction == 0


def test_explicit_zeros_and_false_are_honoured() -> None:
    spec = version_spec(_request(validation_fraction=0.0, scrub_pii=False, length_policy=2))
    assert (spec.options.validation_fraction, spec.options.scrub_pii, spec.options.length_policy) == (
        0.0,
        False,
        "truncate",
    )


def test_every_bad_setting_is_named_together_with_an_unknown_policy() -> None:
    spec = version_spec(_request(max_seq_len=5, validation_fraction=0.9, near_duplicate_threshold=0, length_policy=9))
    assert sorted(p.field for p in spec.option_problems) == [
        "settings.length_policy",
        "settings.max_seq_len",
        "settings.near_duplicate_threshold",
        "settings.validation_fraction",
    ]
    assert spec.options == CurationOptions()  # defaults stand in for the bad ones
    _, problems = parse_options({"max_invalid_fraction": 1.5})
    assert [(p.field, p.description) for p in problems] == [
        ("settings.max_invalid_fraction", "must be less than or equal to 1")
    ]


def test_the_cli_sends_only_the_flags_given(monkeypatch) -> None:
    from tuneforge.cli import datasets

    sent: list[dict] = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def upload_file(self, path, **kwargs):  # type: ignore[no-untyped-def]
            return curation_pb2.File(id="file-" + "a" * 24)

        def create_dataset_version(self, dataset, file_ids, base_model, **settings):  # type: ignore[no-untyped-def]
            sent.append(settings)
            return curation_pb2.DatasetVersion(id="dsv-" + "b" * 24)

    monkeypatch.setattr(datasets, "client_for", lambda args: Client())
    base = ["datasets", "upload", __file__, "--dataset", "d", "--base-model", "m", "--no-wait"]
    for extra in ([], ["--seed", "0", "--keep-pii", "--length-policy", "truncate"]):
        args = build_parser().parse_args([*base, *extra])
        assert args.func(args) == 0
    bare, chosen = sent
    assert bare == {"data_format": 0}
    assert chosen == {"data_format": 0, "seed": 0, "scrub_pii": False, "length_policy": 2}
