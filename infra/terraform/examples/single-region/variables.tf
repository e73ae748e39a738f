# The example's inputs, passed through to the module (whose variables.tf validates them
# again and documents the rest).

variable "region" {
  description = "AWS region to deploy into (the host's KMS egress reaches only kms.REGION.amazonaws.com)."
  type        = string

  validation {
    # The same rule as ephemeral-host --region (host/_cli.py).
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region: an AWS region name such as eu-west-1 or us-gov-west-1."
  }
}

variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "ephemeralml"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "The existing VPC."
  type        = string
}

variable "instance_subnet_ids" {
  description = "Private subnets of the parent instances, one per Availability Zone."
  type        = list(string)
}

variable "nlb_subnet_ids" {
  description = "Subnets of the load balancer (public ones if nlb_internal is false)."
  type        = list(string)
}

variable "nlb_internal" {
  description = "true: a private load balancer; false: internet-facing."
  type        = bool
  default     = true
}

variable "allowed_client_cidrs" {
  description = "IPv4 CIDRs of the clients allowed to reach the relay port."
  type        = list(string)

  validation {
    condition = length(var.allowed_client_cidrs) >= 1 && alltrue([
      for c in var.allowed_client_cidrs :
      can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$", c)) && try(cidrsubnet(c, 0, 0) == c, false)
    ])
    error_message = "allowed_client_cidrs: one or more IPv4 CIDRs written as their network address."
  }
}

variable "base_port" {
  description = "EPHEMERALML_BASE_PORT: the relay (and the load balancer's listener) on BASE, vsock ports BASE+5..BASE+7."
  type        = number
  default     = 5000
}

variable "health_port" {
  description = "The host's /readyz port, reached by the load balancer only (null: BASE+8, the host's default)."
  type        = number
  default     = null
}

variable "instance_type" {
  description = "An enclave-capable instance type."
  type        = string
  default     = "m6i.xlarge"
}

variable "min_size" {
  description = "Fewest parent instances."
  type        = number
  default     = 2
}

variable "max_size" {
  description = "Most parent instances."
  type        = number
  default     = 4
}

variable "desired_capacity" {
  description = "Parent instances to start with (null: leave it to the group)."
  type        = number
  default     = null
}

variable "eif_s3_uri" {
  description = "s3://BUCKET/KEY.eif built by scripts/build_eif.sh."
  type        = string
}

variable "enclave_pcr0" {
  description = "PCR0 of each image the model key may be released to (96 hex; two during a rolling upgrade)."
  type        = list(string)

  validation {
    condition = length(var.enclave_pcr0) >= 1 && alltrue([
      for p in var.enclave_pcr0 : can(regex("^[0-9a-fA-F]{96}$", p)) && !can(regex("^0{96}$", p))
    ])
    error_message = "enclave_pcr0: PCR0 values of 96 hex characters, not all zeros."
  }
}

variable "enclave_pcr8" {
  description = "PCR8 of a signed EIF (96 hex), or null."
  type        = string
  default     = null

  validation {
    condition     = var.enclave_pcr8 == null || (can(regex("^[0-9a-fA-F]{96}$", var.enclave_pcr8)) && !can(regex("^0{96}$", var.enclave_pcr8)))
    error_message = "enclave_pcr8: null or 96 hex characters, not all zeros."
  }
}

variable "host_release_s3_uri" {
  description = "s3://BUCKET/KEY.tar.gz of the host release (wheels/ and systemd/)."
  type        = string
}

variable "host_release_sha256" {
  description = "SHA-256 of the host release archive."
  type        = string
}

variable "model_owner_arn" {
  description = "IAM principal of the model owner (GenerateDataKey and Encrypt, never Decrypt)."
  type        = string
}

variable "key_admin_arns" {
  description = "Administrators of the model key (empty: the account root, i.e. IAM decides)."
  type        = list(string)
  default     = []
}
