# Helpers shared by the rules. A rule reruns when a value in its `params:` changes, so each rule
# passes the values of exactly the params.yaml keys that dvc.yaml declares for the same stage:
# one list of keys, two engines.
import yaml

EXPERIMENTS = config["pipeline"]["experiments"]
SCALE = config["scale"]
DVC_STAGES = yaml.safe_load(open("dvc.yaml"))["stages"]  # run from the repository root


def _lookup(key):
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def tracked(stage):
    """{key: value} for the params.yaml keys that dvc.yaml's `stage` declares."""
    def values(wildcards):
        spec = DVC_STAGES[stage].get("do", DVC_STAGES[stage])
        item = getattr(wildcards, "experiment", "")
        keys = [k.replace("${scale}", SCALE).replace("${item}", item) for k in spec.get("params", [])]
        return {key: _lookup(key) for key in keys}
    return values
