# The reference side of every Frechet distance, once per validation set; every evaluation reads it.
rule reference:
    input: ancient(f"{WORK}/fetched.json"), f"{WORK}/prepared", code("reference")  # reads the fetched Inception weights
    output: directory(f"{WORK}/reference")
    params: values=tracked("reference")
    log: f"{LOGS}/reference.log"
    benchmark: f"{LOGS}/benchmarks/reference.tsv"
    threads: THREADS
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda reference --scale {SCALE} --prepared {WORK}/prepared --out {WORK}/reference --log {LOGS}/reference.log"

rule evaluate:
    input: f"{WORK}/prepared", f"{WORK}/vae", f"{WORK}/reference", f"{WORK}/train/{{experiment}}/tokenizer", code("evaluate")
    output: directory(f"{WORK}/eval/{{experiment}}")
    params: values=tracked("evaluate")
    log: f"{LOGS}/evaluate/{{experiment}}.log"
    benchmark: f"{LOGS}/benchmarks/evaluate/{{experiment}}.tsv"
    threads: THREADS
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
    threads: THREADS
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda evaluate --scale {SCALE} --experiment vae --prepared {WORK}/prepared --vae {WORK}/vae --reference {WORK}/reference --out {WORK}/eval/vae --log {LOGS}/evaluate/vae.log"

# Token files for a generator (pipeline.tokenize). The shards stay on disk across interruptions
# (resume by shard); only the manifest, written last, is the declared output.
rule tokenize:
    input: f"{WORK}/prepared", f"{WORK}/train/{{experiment}}/tokenizer", code("tokenize")
    output: f"{WORK}/tokens/{{experiment}}/manifest.json"
    params: values=tracked("tokenize")
    log: f"{LOGS}/tokenize/{{experiment}}.log"
    benchmark: f"{LOGS}/benchmarks/tokenize/{{experiment}}.tsv"
    threads: THREADS
    resources: gpu=1
    conda: "../envs/coda.yaml"
    shell: f"coda tokenize --scale {SCALE} --experiment {{wildcards.experiment}} --prepared {WORK}/prepared --tokenizer {WORK}/train/{{wildcards.experiment}}/tokenizer --out {WORK}/tokens/{{wildcards.experiment}} --log {LOGS}/tokenize/{{wildcards.experiment}}.log"
