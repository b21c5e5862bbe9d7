# First: the external weights the scale needs (none at demo and tiny), downloaded once into the
# standard caches and verified; fetched.json records what, where and sha256 (docs/pipeline.md).
# On a cluster it runs where Snakemake runs (compute nodes often have no network).
localrules: fetch

rule fetch:
    input: code("fetch")
    output: f"{WORK}/fetched.json"
    params: values=tracked("fetch")
    log: f"{LOGS}/fetch.log"
    conda: "../envs/coda.yaml"
    shell: f"coda fetch --scale {SCALE} --out {WORK}/fetched.json --log {LOGS}/fetch.log"
