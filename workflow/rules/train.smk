# Checkpoints (work/train/<experiment>/checkpoints) are not declared: Snakemake deletes declared
# outputs before a job runs, and rerunning after a crash must resume from them.
rule train:
    input: "work/prepared", "work/vae", "work/cache/manifest.json"
    output:
        tokenizer=directory("work/train/{experiment}/tokenizer"),
        log_tsv="work/train/{experiment}/train_log.tsv",
    params: values=tracked("train"), scale=SCALE
    log: "logs/train/{experiment}.log"
    benchmark: "logs/benchmarks/train/{experiment}.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: "coda train --scale {params.scale} --experiment {wildcards.experiment} --prepared work/prepared --vae work/vae --cache work/cache --out work/train/{wildcards.experiment} --log logs/train/{wildcards.experiment}.log"
