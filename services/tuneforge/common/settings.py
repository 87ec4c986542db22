"""Runtime settings: typed, validated at start-up, from env vars (`TUNEFORGE_…`) and an optional YAML file.

Precedence: explicit arguments > environment (`TUNEFORGE_AUTH__MODE=local`) > YAML file
(`--config FILE` or `TUNEFORGE_CONFIG`) > defaults. The defaults run the embedded mode with no file
at all: SQLite and artifacts under `~/.tuneforge`, models cached under `~/.cache/tuneforge`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

_yaml_file: ContextVar[Path | None] = ContextVar("tuneforge_yaml_file", default=None)

#: The Linear layers an inference replica gives adapter slots by default: every projection of a
#: Llama/Qwen-style decoder layer (PEFT's `all-linear` on those models).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _default_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME", "~/.tuneforge")).expanduser()


class AuthSettings(BaseModel):
    """How callers are identified."""

    model_config = {"extra": "forbid"}

    #: `api_keys`: every call needs `authorization: Bearer <key>` from `keys_file`.
    #: `local`: single-tenant embedded mode, every call acts as `local_tenant`; loopback only.
    mode: Literal["api_keys", "local"] = "api_keys"
    #: YAML file of API keys (mounted from a Kubernetes Secret in clusters); see `tuneforge.common.auth`.
    keys_file: Path | None = None
    #: Tenant every call acts as in local mode.
    local_tenant: str = "local"


class ModelSettings(BaseModel):
    """Where models come from and what may run."""

    model_config = {"extra": "forbid"}

    #: Where embedded models are built and hub models cached.
    cache_dir: Path = Field(default_factory=lambda: Path("~/.cache/tuneforge/models").expanduser())
    #: Model ids allowed to run their own code (`trust_remote_code`); empty means none.
    trust_remote_code: list[str] = Field(default_factory=list)
    #: Seconds a hub model's tokenizer may take to load during a call before the call answers UNAVAILABLE.
    hub_timeout_s: float = Field(default=60.0, gt=0)
    #: Hub loads in flight at once; further ones answer UNAVAILABLE at once instead of queueing.
    hub_concurrency: int = Field(default=2, ge=1, le=64)


class InferenceSettings(BaseModel):
    """The model an inference replica serves."""

    model_config = {"extra": "forbid"}

    #: Base model of this replica: an embedded name, a local path or a hub id.
    base_model: str = "smollm2-135m-instruct"
    #: `auto` picks CUDA when present, else CPU.
    device: str = "auto"
    #: `auto` is bf16 on GPU and fp32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: Adapters resident at once per replica (LRU beyond that).
    max_adapters: int = Field(default=8, ge=1, le=1024)
    #: Highest LoRA rank served (slots are sized for it).
    max_rank: int = Field(default=64, ge=1, le=512)
    #: Names of the Linear layers that get adapter slots (each slot holds every one of them at `max_rank`):
    #: adapters targeting another module are refused. Fewer targets, a lower rank or fewer adapters
    #: shrink the slots' GPU memory, which is checked against what is free at start.
    lora_targets: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1)
    #: Host memory for decoded adapters below the GPU slots, in MiB (LRU): loading one again after its slot
    #: was taken is then a copy, not a file read. 0 keeps none.
    adapter_host_cache_mb: int = Field(default=2048, ge=0)
    #: Requests decoded together in the running batch (continuous batching: they join and leave at every step).
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    #: How long an idle engine waits for more requests after the first before its first step, in milliseconds.
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    #: Tokens one engine step runs at most: one for every decoding request, the rest for chunks of prompts
    #: being prefilled (a long prompt delays the others' next token by one chunk, never by its whole length).
    max_step_tokens: int = Field(default=512, ge=16, le=65536)
    #: Positions of the KV cache (prompt and output tokens of all admitted requests together); a request is
    #: admitted once its prompt and `max_tokens` fit. 0 measures it at start: `kv_memory_fraction` of the GPU
    #: memory free after the weights and adapter slots (8,192 on CPU). Set it when model versions are served
    #: in the same process (embedded mode on a GPU): a measured cache takes the memory they would need.
    kv_cache_tokens: int = Field(default=0, ge=0)
    #: Share of the GPU memory free after weights and adapter slots that a measured KV cache takes.
    kv_memory_fraction: float = Field(default=0.9, gt=0, le=0.98)
    #: Longest rendered prompt accepted, in tokens.
    max_prompt_tokens: int = Field(default=4096, ge=1)
    #: Largest `max_tokens` a request may ask for.
    max_new_tokens: int = Field(default=1024, ge=1)
    #: Requests of one tenant in flight at once.
    max_concurrent_per_tenant: int = Field(default=16, ge=1)
    #: Port of the OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`); unset disables it.
    http_port: int | None = Field(default=None, ge=0, le=65535)
    #: Cluster mode: base URL of the Ray Serve application (`serve_app.py`) on Serve's own HTTP proxy,
    #: its route prefix included, e.g. `http://tuneforge-inference-serve-svc.NS.svc:8000/tuneforge-inference`.
    #: The front then loads no model and sends each request there. Unset: the engine runs in this
    #: process (the embedded default). Never a Ray Client address (Ray refuses streaming handles over it).
    serve_url: str | None = None
    #: Shared secret between the front and the Serve replicas (env `TUNEFORGE_INFERENCE__SERVE_TOKEN`, from
    #: a Secret): the front sends it as `Authorization: Bearer …`; replicas that have one refuse requests
    #: without it (Serve's proxy itself authenticates nobody).
    serve_token: SecretStr | None = None
    #: Seconds between the front's readiness checks of the Serve application (cluster mode).
    serve_health_interval_s: float = Field(default=2.0, gt=0, le=60)
    #: Seconds the front keeps retrying a request Serve could not take (connection refused or lost, proxy
    #: 502/503/504) before it answers UNAVAILABLE; never once the first token has arrived.
    serve_retry_s: float = Field(default=15.0, ge=0, le=600)
    #: Seconds a served answer stays on record (prompt, model, sampling, answer in the metadata store) so
    #: it can be rated by its response id (FeedbackService, `/v1/feedback`); 0 records none.
    feedback_window_s: float = Field(default=7 * 24 * 3600.0, ge=0)
    #: Engines for model versions (full fine-tunes, merged models) held at once in one process, each a
    #: whole model; the least recently used one without requests in flight is unloaded for a new one.
    max_model_engines: int = Field(default=2, ge=1, le=64)
    #: Cluster mode, the front: the Serve application of each model version the chart deploys,
    #: `tenant/name:version` → its URL on Serve's proxy (route prefix included). A model version not
    #: named here is FAILED_PRECONDITION (not deployed).
    serve_models: dict[str, str] = Field(default_factory=dict)
    #: Cluster mode, a Serve replica: the model version (`tenant/name:version`) it serves instead of
    #: `base_model`; unset for the base model's application.
    serve_model: str | None = None

    @field_validator("lora_targets", mode="after")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not name.isidentifier()]
        if bad:
            raise ValueError(
                f"inference.lora_targets holds module names such as q_proj (the last part of a Linear's name), "
                f"not {', '.join(map(repr, bad))}"
            )
        if len(set(value)) != len(value):
            raise ValueError("inference.lora_targets names a module twice")
        return value

    @field_validator("serve_url", mode="after")
    @classmethod
    def _http_serve_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"inference.serve_url must be the http(s) URL of the Serve application on Serve's HTTP proxy "
                f"(e.g. http://<rayservice>-serve-svc:8000/tuneforge-inference), not {value!r}; the front never "
                "joins the cluster as a Ray Client"
            )
        return value.rstrip("/")


class CurationSettings(BaseModel):
    """How dataset versions are built."""

    model_config = {"extra": "forbid"}

    #: Worker processes building dataset versions in parallel.
    workers: int = Field(default=1, ge=1, le=64)
    #: Processes each build spreads its records over (0 = one per CPU core, fewer for small inputs).
    build_processes: int = Field(default=0, ge=0, le=256)
    #: Seconds a build's lease lasts unrenewed: how soon the build of a version whose worker died
    #: with its server starts again (on this or another replica). Renewed every third of it.
    build_lease_ttl_s: float = Field(default=30.0, gt=0, le=3600)
    #: Server-side directories `source_uri` may read from; empty means uploads only.
    import_roots: list[Path] = Field(default_factory=list)
    #: Share of invalid records above which a version fails, when a request does not set its own
    #: (`settings.max_invalid_fraction`); 1 keeps the valid records of any file.
    max_invalid_fraction: float = Field(default=0.5, ge=0, le=1)
    #: InferenceService address (host:port) Self-Instruct generation runs generate through when curation
    #: runs in a pod of its own; empty: the inference service of this process (embedded).
    inference_address: str | None = None
    #: A `service` API key the inference service accepts (env `TUNEFORGE_CURATION__INFERENCE_API_KEY`);
    #: each call names the run's tenant.
    inference_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _inference_key_with_address(self) -> CurationSettings:
        if self.inference_address and self.inference_api_key is None:
            raise ValueError("curation.inference_address needs curation.inference_api_key (a `service` key)")
        return self


class PromotionGateSettings(BaseModel):
    """A platform default promotion gate (see `TrainingSettings.promotion_gates`)."""

    model_config = {"extra": "forbid"}

    #: Suites a version needs a finished evaluation run on, against its base model, e.g. `builtin/core-zh-en`.
    suite_ids: list[str] = Field(min_length=1, max_length=8)
    #: Categories whose 95% interval of the difference must lie above zero (`overall` may be one).
    target_categories: list[str] = Field(default_factory=list)
    #: Largest drop of the pass rate (0-1) any other category may show.
    max_drop: float = Field(default=0.0, ge=0, le=1)
    #: Least mean 1-5 judge score over the suite, when set (the run needs a judge model).
    min_judge_score: float | None = Field(default=None, ge=1, le=5)


class TrainingSettings(BaseModel):
    """Where training jobs run and how many each tenant may have."""

    model_config = {"extra": "forbid"}

    #: Ray dashboard (Job Submission API) address, e.g. `http://raycluster-head-svc:8265`. Unset: the
    #: `RAY_ADDRESS` environment variable if it is an http(s) URL, else a local Ray head that the
    #: service starts under `<home>/ray` and reuses after its own restart (the embedded default).
    ray_address: str | None = None
    #: CPUs the local Ray head offers to jobs (embedded default only).
    local_ray_cpus: int = Field(default=2, ge=1, le=1024)
    #: Python that runs `ray_jobs/train.py` on the cluster; unset: this interpreter for a local head,
    #: `python` for a remote cluster (the training image's).
    python: str | None = None
    #: Path of `ray_jobs/train.py` as the cluster sees it; unset: the copy next to this package.
    script: Path | None = None
    #: Jobs a tenant may have queued or running; more are refused with RESOURCE_EXHAUSTED.
    max_active_jobs_per_tenant: int = Field(default=8, ge=1)
    #: Jobs of one tenant submitted to Ray at a time; the rest wait in QUEUED.
    max_running_jobs_per_tenant: int = Field(default=2, ge=1)
    #: Seconds between reconciliations of jobs with Ray.
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Platform default promotion gates by alias (e.g. `prod`), for every adapter whose tenant set no
    #: gate of its own on that alias (AdapterService.SetPromotionGate). Empty: aliases move freely.
    promotion_gates: dict[str, PromotionGateSettings] = Field(default_factory=dict)


class EvaluationSettings(BaseModel):
    """Where evaluation runs generate their answers."""

    model_config = {"extra": "forbid"}

    #: gRPC address (`host:port`) of the inference service when it runs in another pod, e.g.
    #: `tuneforge-inference:50051`. Unset: the inference service of this process (the embedded default).
    inference_address: str | None = None
    #: A `service` API key the inference service accepts (env `TUNEFORGE_EVALUATION__INFERENCE_API_KEY`,
    #: from a Secret); each call names the tenant of the run it generates for.
    inference_api_key: SecretStr | None = None
    #: Generation calls of one run in flight at once.
    concurrency: int = Field(default=8, ge=1, le=256)

    @model_validator(mode="after")
    def _key_with_address(self) -> EvaluationSettings:
        if self.inference_address and self.inference_api_key is None:
            raise ValueError(
                "evaluation.inference_address needs evaluation.inference_api_key (a `service` key of the "
                "inference service's keys file; env TUNEFORGE_EVALUATION__INFERENCE_API_KEY)"
            )
        return self


class Settings(BaseSettings):
    """All runtime settings of a Tuneforge process."""

    model_config = SettingsConfigDict(
        env_prefix="TUNEFORGE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    #: Root of the embedded default's state (database, artifacts).
    home: Path = Field(default_factory=_default_home)
    #: Interface the gRPC server binds; non-loopback addresses need `auth.mode: api_keys`.
    host: str = "127.0.0.1"
    #: gRPC port (0 picks a free one).
    port: int = Field(default=50051, ge=0, le=65535)
    #: Port of the Prometheus `/metrics` endpoint; unset disables it.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: SQLAlchemy URL of the metadata store; unset means SQLite at `<home>/metadata.db`.
    database_url: str | None = None
    #: Root directory of the artifact store; unset means `<home>/artifacts`.
    artifact_root: Path | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    curation: CurationSettings = Field(default_factory=CurationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    #: `json` for machines (the default in containers), `console` for people.
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: The drain bound after SIGTERM: in-flight calls get this long to finish (streams that follow a
    #: job end at once, their clients reconnect with a cursor), then each service stops within it.
    #: Ray jobs keep running; the next start re-attaches to them. Keep it below the pod's
    #: `terminationGracePeriodSeconds`.
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    #: Largest upload accepted by DatasetService.UploadFile, in bytes.
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)

    @field_validator("home", "artifact_root", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.home / 'metadata.db'}"
        if self.artifact_root is None:
            self.artifact_root = self.home / "artifacts"
        if self.auth.mode == "local" and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"auth.mode 'local' lets every caller act as tenant {self.auth.local_tenant!r}; it is only "
                f"allowed on loopback, but host is {self.host!r}. Use auth.mode 'api_keys' with auth.keys_file."
            )
        if self.auth.mode == "api_keys" and self.auth.keys_file is None:
            raise ValueError(
                "auth.mode 'api_keys' needs auth.keys_file (env TUNEFORGE_AUTH__KEYS_FILE); "
                "for a laptop, choose the single-tenant local mode (TUNEFORGE_AUTH__MODE=local or `tuneforge up`)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _yaml_file.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `overrides`, the environment and the YAML file (`config_file` or `$TUNEFORGE_CONFIG`)."""
    path = config_file or os.environ.get("TUNEFORGE_CONFIG")
    yaml_path = Path(path).expanduser() if path else None
    if yaml_path is not None and not yaml_path.is_file():
        raise FileNotFoundError(f"settings file {yaml_path} does not exist")
    token = _yaml_file.set(yaml_path)
    try:
        return Settings(**overrides)
    finally:
        _yaml_file.reset(token)
