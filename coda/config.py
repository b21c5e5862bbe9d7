"""params.yaml: loading, validation against the pipeline's JSON schema, experiment resolution.

Every `coda` command calls ``load_params`` first, so a typo or an out-of-range value stops a DVC run
exactly as Snakemake's ``validate()`` stops a Snakemake run: before any computation.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .errors import UserError

SCHEMA_RELATIVE = Path("workflow/schemas/params.schema.yaml")


class ParamsError(UserError, ValueError):
    """params.yaml is malformed: the message names the key path and what is allowed."""


def _key_path(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error: ValidationError) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {unknown}; allowed: {allowed}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; choose one of {error.validator_value}"
    if error.validator == "oneOf" and error.context:
        allowed = error.schema.get("description", "null or a mapping")  # a oneOf says what it allows
        return f"{where}: {error.instance!r} must be {allowed} ({error.context[-1].message})"
    return f"{where}: {error.message}"


def find_schema(params_path: Path) -> Path:
    for base in (params_path.resolve().parent, Path.cwd()):
        if (base / SCHEMA_RELATIVE).is_file():
            return base / SCHEMA_RELATIVE
    raise FileNotFoundError(f"{SCHEMA_RELATIVE} not found next to {params_path}; run from the repository root")


def validate_params(params: dict, schema: dict, source: str = "params.yaml") -> None:
    errors = sorted(Draft202012Validator(schema).iter_errors(params), key=lambda e: list(e.absolute_path))
    problems = [_describe(e) for e in errors]
    if isinstance(params, dict) and not problems:
        if params["scale"] not in params["scales"]:
            problems.append(f"scale: {params['scale']!r} is not one of the defined scales {sorted(params['scales'])}")
        for name in params["pipeline"]["experiments"]:
            if name not in params["experiments"] or name == "base":
                problems.append(f"pipeline.experiments: {name!r} is not a block of `experiments` "
                                f"(defined: {sorted(k for k in params['experiments'] if k != 'base')})")
        for name in params["pipeline"].get("tokenize", []):
            if name not in params["pipeline"]["experiments"]:
                problems.append(f"pipeline.tokenize: {name!r} is not one of pipeline.experiments "
                                f"{params['pipeline']['experiments']} (only a trained experiment can tokenize)")
        block = params["scales"].get(params["scale"], {})
        shard, batch = block.get("tokenize", {}).get("shard_size"), block.get("evaluate", {}).get("batch_size", 16)
        if shard is not None and shard % batch:
            problems.append(f"scales.{params['scale']}.tokenize.shard_size: {shard} is not a multiple of the "
                            f"evaluate batch size {batch} (each batch must draw the same posterior noise as "
                            f"evaluate's)")
        problems += _vae_problems(params) if not problems else []
    if problems:
        raise ParamsError(f"{source} is invalid:\n  - " + "\n  - ".join(problems))


def load_params(path: str | Path = "params.yaml", scale: str | None = None) -> dict:
    """params.yaml, validated; ``scale`` overrides its ``scale`` key (then validated as well)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root or pass --params")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if scale is not None and isinstance(params, dict):
        params["scale"] = scale
    schema = yaml.safe_load(find_schema(path).read_text())
    validate_params(params, schema, str(path))
    return params


def deep_merge(base: dict, override: dict | None) -> dict:
    """``override`` on top of ``base``; mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def scale_block(params: dict) -> dict:
    return params["scales"][params["scale"]]


# -- the VAEs of a scale ---------------------------------------------------------------------
# A scale's `vae` block is its VAE named "vae": the latent cache, every experiment that names no VAE
# and the ceiling row `vae` use it. `extra_vaes` adds named ones; an experiment picks one with
# `vae: <name>`, and at a scale that does not declare that name it has no row (docs/pipeline.md).
DEFAULT_VAE = "vae"


def scale_vaes(params: dict) -> dict[str, dict]:
    """The current scale's VAEs by name, its `vae` first."""
    scale = scale_block(params)
    return {DEFAULT_VAE: scale["vae"], **scale.get("extra_vaes", {})}


def vae_location(root, name: str) -> Path:
    """VAE `name`'s folder in a per-VAE tree (work/<scale>/vae, work/<scale>/eval/vae): the root for
    the scale's `vae`, the subfolder `name` for an extra one."""
    return Path(root) if name == DEFAULT_VAE else Path(root) / name


def ceiling_name(vae: str) -> str:
    """The row of VAE `vae` itself, no quantizer: `vae`, or `vae_<name>` for an extra VAE."""
    return DEFAULT_VAE if vae == DEFAULT_VAE else f"{DEFAULT_VAE}_{vae}"


def experiment_vae(experiment: dict) -> str:
    return experiment.get("vae", DEFAULT_VAE)


def at_scale(params: dict, experiment: dict) -> bool:
    """Whether the current scale declares the experiment's VAE (else the experiment has no row here)."""
    return experiment_vae(experiment) in scale_vaes(params)


def scale_experiments(params: dict) -> list[str]:
    """The experiments of `pipeline.experiments` that have a row at the current scale. (DVC gives every
    scale the same stages; the others' stages only record that they have none.)"""
    return [name for name in params["pipeline"]["experiments"] if at_scale(params, experiment_config(params, name))]


def _vae_problems(params: dict) -> list[str]:
    declared = {DEFAULT_VAE} | {name for scale in params["scales"].values() for name in scale.get("extra_vaes", {})}
    problems = []
    for name in params["pipeline"]["experiments"]:
        experiment = experiment_config(params, name)
        vae, train = experiment_vae(experiment), experiment.get("train", {})
        if vae not in declared:
            problems.append(f"experiments.{name}.vae: {vae!r} is no scale's VAE; declared: {sorted(declared)} "
                            "(a scale's `vae` is 'vae', its `extra_vaes` by name)")
        elif vae != DEFAULT_VAE and vae in scale_vaes(params) and (
                train.get("data_mode") == "latents" or train.get("quantizer_warmup_steps", 0) > 0):
            problems.append(f"experiments.{name}: trains on cached latents (data_mode: latents or "
                            f"quantizer_warmup_steps), but the latent cache holds the scale's `vae` only, not "
                            f"{vae!r}: use data_mode: images without warm-up, or drop `vae`")
    return problems


def experiment_config(params: dict, name: str) -> dict:
    """base <- scale's experiment sizes <- scale's per-experiment sizes <- the experiment itself."""
    if name not in params["experiments"]:
        raise ParamsError(f"experiment {name!r} is not defined in params.yaml "
                          f"(defined: {sorted(k for k in params['experiments'] if k != 'base')})")
    scale = scale_block(params)
    config = deep_merge(params["experiments"]["base"], scale.get("experiment"))
    config = deep_merge(config, scale.get("experiments", {}).get(name))
    config = deep_merge(config, params["experiments"][name] if name != "base" else {})
    config["name"] = name
    return config


def train_processes(params: dict, name: str) -> int:
    """The processes of experiment `name`'s train job (one GPU each): its train.processes, or 1 where
    nothing trains (the authors' checkpoints, or no row at this scale)."""
    experiment = experiment_config(params, name)
    if experiment.get("kind", "train") != "train" or not at_scale(params, experiment):
        return 1
    return experiment.get("train", {}).get("processes", 1)
