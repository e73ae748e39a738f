terraform {
  # 1.5: check blocks and the validation functions used in variables.tf.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      # 5.40: security groups on Network Load Balancers, aws_vpc_security_group_*_rule,
      # enclave_options on launch templates. Below 6: data.aws_region.current.name.
      source  = "hashicorp/aws"
      version = ">= 5.40, < 6.0"
    }
  }
}
