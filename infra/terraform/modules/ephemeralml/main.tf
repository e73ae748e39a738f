# ephemeralml on EC2: parent instances with Nitro Enclaves in an Auto Scaling group behind
# a Network Load Balancer, the model key in KMS (released only to an attested enclave),
# the encrypted bundles in S3. Resources by concern: kms.tf, s3.tf, iam.tf, network.tf,
# compute.tf. What each security-critical setting is for: ../../README.md.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.ami_architecture}"
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # runtime/_ports.py: the relay on BASE (TCP), the enclave on BASE+5, the host's
  # services on BASE+6 and its KMS egress on BASE+7 (vsock), the host's /healthz,
  # /readyz and /metrics on BASE+8 (TCP) unless health_port says otherwise.
  relay_port  = var.base_port
  health_port = var.health_port != null ? var.health_port : var.base_port + 8

  key_admin_arns = length(var.key_admin_arns) > 0 ? var.key_admin_arns : [
    "arn:${local.partition}:iam::${local.account_id}:root"
  ]

  # s3://BUCKET/KEY, split for the IAM resources (exactly these objects, nothing else).
  eif_bucket     = regex("^s3://([^/]+)/(.+)$", var.eif_s3_uri)[0]
  eif_key        = regex("^s3://([^/]+)/(.+)$", var.eif_s3_uri)[1]
  release_bucket = regex("^s3://([^/]+)/(.+)$", var.host_release_s3_uri)[0]
  release_key    = regex("^s3://([^/]+)/(.+)$", var.host_release_s3_uri)[1]

  ami_id = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.al2023[0].insecure_value

  # The host's model store (--store), as the instances see it.
  store_url = "s3://${aws_s3_bucket.bundles.id}/${var.model_prefix}"

  tags = merge(var.tags, { "ephemeralml:deployment" = var.name })
}
