"""Seed the SageMaker training instance catalogue (operators edit it in the admin afterwards).

Names: only SageMaker *training* instance types; each is checked against the
`TrainingInstanceType` enum of botocore's SageMaker service model by
jobs/tests/test_pricing.py (ml.g5.large and ml.c5.large, for instance, do not
exist for training).

Hardware: vCPUs, memory and GPUs from the EC2 instance type pages
(aws.amazon.com/ec2/instance-types). TFLOP/s are the dense (no sparsity) peak
figures of the NVIDIA data sheets for the whole instance, the numbers the
estimator's utilisation factor refers to: T4 65 (fp16: no bf16, the script
falls back to fp16), V100 125 (fp16, same reason), A10G 70 (AWS publishes no
tensor figure; 70 is the commonly measured one, NVIDIA's A10 sheet says 125),
L4 121, A100 312 bf16; fp32 8.1, 15.7, 31.2, 30.3, 19.5. CPU instances: fp32
peak of AVX-512 at the all-core clock (32 FLOP/cycle per core, two vCPUs per
core), about 0.04 TFLOP/s per vCPU on m5 and 0.048 on c5.

Prices: SageMaker Training, On-Demand, US East (N. Virginia), per instance
hour, from aws.amazon.com/sagemaker/pricing as known on PRICE_DATE. They were
not re-read online when this migration was written (the build machine has no
internet access), so check them against the pricing page and correct them in
the admin; the cost of each job uses whatever price is stored.
"""

import datetime

from django.db import migrations

PRICE_DATE = datetime.date(2025, 1, 1)
REGION = "us-east-1"

# name, vCPUs, memory GiB, GPU type, GPU count, GPU memory GiB (each), bf16 TFLOP/s, fp32 TFLOP/s, $/hour
INSTANCE_TYPES = [
    ("ml.m5.large", 2, 8, "", 0, 0, 0, 0.08, "0.1150"),
    ("ml.m5.xlarge", 4, 16, "", 0, 0, 0, 0.16, "0.2300"),
    ("ml.m5.2xlarge", 8, 32, "", 0, 0, 0, 0.32, "0.4610"),
    ("ml.c5.xlarge", 4, 8, "", 0, 0, 0, 0.19, "0.2040"),
    ("ml.c5.2xlarge", 8, 16, "", 0, 0, 0, 0.38, "0.4080"),
    ("ml.g4dn.xlarge", 4, 16, "NVIDIA T4", 1, 16, 65, 8.1, "0.7364"),
    ("ml.g5.xlarge", 4, 16, "NVIDIA A10G", 1, 24, 70, 31.2, "1.4080"),
    ("ml.g5.2xlarge", 8, 32, "NVIDIA A10G", 1, 24, 70, 31.2, "1.5150"),
    ("ml.g5.4xlarge", 16, 64, "NVIDIA A10G", 1, 24, 70, 31.2, "2.0300"),
    ("ml.g5.12xlarge", 48, 192, "NVIDIA A10G", 4, 24, 280, 124.8, "7.0900"),
    ("ml.g6.xlarge", 4, 16, "NVIDIA L4", 1, 24, 121, 30.3, "1.1267"),
    ("ml.p3.2xlarge", 8, 61, "NVIDIA V100", 1, 16, 125, 15.7, "3.8250"),
    ("ml.p4d.24xlarge", 96, 1152, "NVIDIA A100", 8, 40, 2496, 156.0, "37.6880"),
]


def seed(apps, schema_editor):
    InstanceType = apps.get_model("jobs", "InstanceType")
    for name, vcpus, memory, gpu_type, gpus, gpu_memory, bf16, fp32, price in INSTANCE_TYPES:
        InstanceType.objects.update_or_create(
            name=name,
            defaults={
                "vcpus": vcpus,
                "memory_gib": memory,
                "gpu_type": gpu_type,
                "gpu_count": gpus,
                "gpu_memory_gib": gpu_memory,
                "bf16_tflops": bf16,
                "fp32_tflops": fp32,
                "price_per_hour_usd": price,
                "price_region": REGION,
                "price_date": PRICE_DATE,
                "is_active": True,
            },
        )


def unseed(apps, schema_editor):
    InstanceType = apps.get_model("jobs", "InstanceType")
    InstanceType.objects.filter(name__in=[row[0] for row in INSTANCE_TYPES], training_jobs=None).delete()


class Migration(migrations.Migration):
    dependencies = [("jobs", "0004_sagemaker_fields")]

    operations = [migrations.RunPython(seed, unseed)]
