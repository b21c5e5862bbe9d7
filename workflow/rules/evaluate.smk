# The reference side of every Frechet distance, once per validation set; every evaluation reads it.
rule reference:
    input: f"{WORK}/prepared", code("reference")
    output: directory(f"{WORK}/reference")
    params: values=tracked("reference")
    log: f"{LOGS}/reference.log"
    benchmark: f"{LOGS}/benchmarks/reference.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda reference --scale {SCALE} --prepared {WORK}/prepared --out {WORK}/reference --log {LOGS}/reference.log"

rule evaluate:
    input: f"{WORK}/prepared", f"{WORK}/vae", f"{WORK}/reference", f"{WORK}/train/{{experiment}}/tokenizer", code("evaluate")
    output: directory(f"{WORK}/eval/{{experiment}}")
    params: values=tracked("evaluate")
    log: f"{LOGS}/evaluate/{{experiment}}.log"
    benchmark: f"{LOGS}/benchmarks/evaluate/{{experiment}}.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda evaluate --scale {SCALE} --experiment {{wildcards.experiment}} --prepared {WORK}/prepared --vae {WORK}/vae --reference {WORK}/reference --tokenizer {WORK}/train/{{wildcards.experiment}}/tokenizer --out {WORK}/eval/{{wildcards.experiment}} --log {LOGS}/evaluate/{{wildcards.experiment}}.log"

# The continuous VAE itself, no quantizer: the ceiling row.
rule evaluate_vae:
    input: f"{WORK}/prepared", f"{WORK}/vae", f"{WORK}/reference", code("evaluate_vae")
    output: directory(f"{WORK}/eval/vae")
    params: values=tracked("evaluate_vae")
    log: f"{LOGS}/evaluate/vae.log"
    benchmark: f"{LOGS}/benchmarks/evaluate/vae.tsv"
    threads: 2
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda evaluate --scale {SCALE} --experiment vae --prepared {WORK}/prepared --vae {WORK}/vae --reference {WORK}/reference --out {WORK}/eval/vae --log {LOGS}/evaluate/vae.log"
