from django.db import migrations

M = 1_000_000
B = 1_000_000_000
GPU_SMALL = ["ml.g5.xlarge", "ml.g6.xlarge"]
GPU_MEDIUM = ["ml.g5.2xlarge", "ml.g5.4xlarge"]
GPU_LARGE = ["ml.g5.12xlarge", "ml.p4d.24xlarge"]
CPU = ["ml.m5.xlarge", "ml.c5.xlarge"]

# name, hub id, family, architecture, parameters, context, licence, gated, method, instances, description
BASE_MODELS = [
    ("Tiny GPT-2 (from scratch)", "scratch:tiny-gpt2", "GPT-2", "causal", int(1.7 * M), 256, "MIT", False,
     "full", CPU, "Trains a tokenizer and a small GPT-2 on your data alone. No download: ideal for a first try."),
    ("DistilGPT-2", "distilgpt2", "GPT-2", "causal", 82 * M, 1024, "Apache-2.0", False, "full", CPU + GPU_SMALL,
     "A distilled GPT-2: quick to tune, good for short texts."),
    ("GPT-2", "gpt2", "GPT-2", "causal", 124 * M, 1024, "MIT", False, "full", GPU_SMALL, "The original GPT-2 small."),
    ("GPT-2 Medium", "gpt2-medium", "GPT-2", "causal", 355 * M, 1024, "MIT", False, "full", GPU_SMALL, ""),
    ("GPT-2 Large", "gpt2-large", "GPT-2", "causal", 774 * M, 1024, "MIT", False, "lora", GPU_SMALL, ""),
    ("SmolLM2 135M", "HuggingFaceTB/SmolLM2-135M", "SmolLM", "causal", 135 * M, 8192, "Apache-2.0", False,
     "full", CPU + GPU_SMALL, "A small modern Llama-style model."),
    ("SmolLM2 360M", "HuggingFaceTB/SmolLM2-360M", "SmolLM", "causal", 362 * M, 8192, "Apache-2.0", False,
     "full", GPU_SMALL, ""),
    ("Pythia 160M", "EleutherAI/pythia-160m", "Pythia", "causal", 162 * M, 2048, "Apache-2.0", False, "full",
     GPU_SMALL, ""),
    ("Qwen2.5 0.5B", "Qwen/Qwen2.5-0.5B", "Qwen", "causal", 494 * M, 32768, "Apache-2.0", False, "lora",
     GPU_SMALL, ""),
    ("Qwen2.5 0.5B Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen", "causal", 494 * M, 32768, "Apache-2.0",
     False, "lora", GPU_SMALL, "Chat-tuned: use it with chat or prompt/completion data."),
    ("Llama 3.2 1B", "meta-llama/Llama-3.2-1B", "Llama", "causal", int(1.24 * B), 131072,
     "Llama 3.2 Community License", True, "lora", GPU_SMALL, "Gated: accept the licence on Hugging Face."),
    ("Llama 2 7B", "meta-llama/Llama-2-7b-hf", "Llama", "causal", int(6.74 * B), 4096,
     "Llama 2 Community License", True, "lora", GPU_MEDIUM + GPU_LARGE, "Gated: accept the licence on Hugging Face."),
    ("Mistral 7B", "mistralai/Mistral-7B-v0.1", "Mistral", "causal", int(7.24 * B), 32768, "Apache-2.0", True,
     "lora", GPU_MEDIUM + GPU_LARGE, "Gated: accept the terms on Hugging Face."),
    ("FLAN-T5 Small", "google/flan-t5-small", "T5", "seq2seq", 77 * M, 512, "Apache-2.0", False, "full",
     CPU + GPU_SMALL, "Encoder-decoder: best with prompt/completion data."),
    ("FLAN-T5 Base", "google/flan-t5-base", "T5", "seq2seq", 248 * M, 512, "Apache-2.0", False, "full", GPU_SMALL, ""),
    ("FLAN-T5 Large", "google/flan-t5-large", "T5", "seq2seq", 783 * M, 512, "Apache-2.0", False, "lora",
     GPU_SMALL, ""),
]  # fmt: skip


def seed(apps, schema_editor):
    BaseModel = apps.get_model("jobs", "BaseModel")
    for order, row in enumerate(BASE_MODELS):
        name, hub_id, family, arch, params, context, licence, gated, method, instances, description = row
        BaseModel.objects.update_or_create(
            hub_id=hub_id,
            defaults={
                "name": name,
                "family": family,
                "architecture": arch,
                "parameters": params,
                "context_length": context,
                "licence": licence,
                "gated": gated,
                "recommended_method": method,
                "recommended_instance_types": instances,
                "description": description,
                "sort_order": order * 10,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("jobs", "BaseModel").objects.filter(hub_id__in=[row[1] for row in BASE_MODELS]).delete()


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
