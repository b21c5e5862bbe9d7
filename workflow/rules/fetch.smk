# First: the external weights the scale needs (none at demo and tiny), downloaded once into the
# standard caches and verified; fetched.json records what, where and sha256 (docs/pipeline.md).
# On a cluster it runs where Snakemake runs (compute nodes often have no network).
# A checkpoint, so that Snakemake plans the rest again once it has run: as a plain rule, a rerun of
# fetch (after any change to its params) hid every job behind the ancient() inputs on fetched.json,
# and one call ran fetch alone and exited 0 (snakemake/snakemake#4166).
localrules: fetch

checkpoint fetch:
    input: code("fetch")
    output: f"{WORK}/fetched.json"
    params: values=tracked("fetch")
    log: f"{LOGS}/fetch.log"
    conda: "../envs/coda.yaml"
    shell: f"coda fetch --scale {SCALE} --out {WORK}/fetched.json --log {LOGS}/fetch.log"
