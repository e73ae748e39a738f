# One region, one Auto Scaling group of parent instances behind one Network Load
# Balancer, in an existing VPC. Copy terraform.tfvars.example to terraform.tfvars and
# fill it in (../../README.md says where each value comes from).

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "ephemeralml:example" = "single-region"
    }
  }
}

module "ephemeralml" {
  source = "../../modules/ephemeralml"

  name = var.name
  tags = var.tags

  vpc_id               = var.vpc_id
  instance_subnet_ids  = var.instance_subnet_ids
  nlb_subnet_ids       = var.nlb_subnet_ids
  nlb_internal         = var.nlb_internal
  allowed_client_cidrs = var.allowed_client_cidrs

  base_port   = var.base_port
  health_port = var.health_port

  instance_type    = var.instance_type
  min_size         = var.min_size
  max_size         = var.max_size
  desired_capacity = var.desired_capacity

  eif_s3_uri          = var.eif_s3_uri
  enclave_pcr0        = var.enclave_pcr0
  enclave_pcr8        = var.enclave_pcr8
  host_release_s3_uri = var.host_release_s3_uri
  host_release_sha256 = var.host_release_sha256

  model_owner_arn = var.model_owner_arn
  key_admin_arns  = var.key_admin_arns
}
