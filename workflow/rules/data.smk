rule prepare:
    input: code("prepare")
    output: directory(f"{WORK}/prepared")
    params: values=tracked("prepare")
    log: f"{LOGS}/prepare.log"
    benchmark: f"{LOGS}/benchmarks/prepare.tsv"
    threads: THREADS
    conda: "../envs/coda.yaml"
    shell: f"coda prepare --scale {SCALE} --out {WORK}/prepared --log {LOGS}/prepare.log"

# fetched.json orders the DAG (fetch first) and must exist; ancient(): a rerun of fetch that finds the
# same weights reruns nothing downstream (what the weights are is in each stage's params).
rule vae:
    input: ancient(f"{WORK}/fetched.json"), f"{WORK}/prepared", code("vae")
    output: directory(f"{WORK}/vae")
    params: values=tracked("vae")
    log: f"{LOGS}/vae.log"
    benchmark: f"{LOGS}/benchmarks/vae.tsv"
    threads: THREADS
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda vae --scale {SCALE} --prepared {WORK}/prepared --out {WORK}/vae --log {LOGS}/vae.log"

# The shards stay on disk across interruptions (resume); only the manifest, written last,
# is the declared output, so Snakemake never deletes finished shards.
rule cache:
    input: f"{WORK}/prepared", f"{WORK}/vae", code("cache")
    output: f"{WORK}/cache/manifest.json"
    params: values=tracked("cache")
    log: f"{LOGS}/cache.log"
    benchmark: f"{LOGS}/benchmarks/cache.tsv"
    threads: THREADS
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda cache --scale {SCALE} --prepared {WORK}/prepared --vae {WORK}/vae --out {WORK}/cache --log {LOGS}/cache.log"
