# A job of train.processes ranks: `coda train` starts them itself (coda/train/launch.py).
# Checkpoints ({WORK}/train/<experiment>/checkpoints) are not declared: Snakemake deletes declared
# outputs before a job runs, and rerunning after a crash must resume from them. The curves so far are
# kept there too (checkpoints/train_log.tsv); train_log.tsv is published from them at the end.
rule train:
    input: f"{WORK}/prepared", f"{WORK}/vae", f"{WORK}/cache/manifest.json", code("train")
    output:
        tokenizer=directory(f"{WORK}/train/{{experiment}}/tokenizer"),
        log_tsv=f"{WORK}/train/{{experiment}}/train_log.tsv",
    params: values=tracked("train")
    log: f"{LOGS}/train/{{experiment}}.log"
    benchmark: f"{LOGS}/benchmarks/train/{{experiment}}.tsv"
    threads: lambda wildcards: THREADS * processes(wildcards)  # scales.<scale>.threads for each rank
    resources: gpu=processes  # one card per rank: --gpus=N under SLURM
    conda: "../envs/coda.yaml"
    shell: f"coda train --scale {SCALE} --experiment {{wildcards.experiment}} --prepared {WORK}/prepared --vae {WORK}/vae --cache {WORK}/cache --out {WORK}/train/{{wildcards.experiment}} --log {LOGS}/train/{{wildcards.experiment}}.log"
