rule prepare:
    output: directory("work/prepared")
    params: values=tracked("prepare"), scale=SCALE
    log: "logs/prepare.log"
    benchmark: "logs/benchmarks/prepare.tsv"
    conda: "../envs/coda.yaml"
    shell: "coda prepare --scale {params.scale} --out work/prepared --log logs/prepare.log"

rule vae:
    input: "work/prepared"
    output: directory("work/vae")
    params: values=tracked("vae"), scale=SCALE
    log: "logs/vae.log"
    benchmark: "logs/benchmarks/vae.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: "coda vae --scale {params.scale} --prepared work/prepared --out work/vae --log logs/vae.log"

# The shards stay on disk across interruptions (resume); only the manifest, written last,
# is the declared output, so Snakemake never deletes finished shards.
rule cache:
    input: "work/prepared", "work/vae"
    output: "work/cache/manifest.json"
    params: values=tracked("cache"), scale=SCALE
    log: "logs/cache.log"
    benchmark: "logs/benchmarks/cache.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: "coda cache --scale {params.scale} --prepared work/prepared --vae work/vae --out work/cache --log logs/cache.log"
