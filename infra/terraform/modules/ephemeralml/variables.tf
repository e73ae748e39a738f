# Inputs of the ephemeralml module. What each security-critical one is for:
# infra/terraform/README.md.

variable "name" {
  description = "Prefix of every resource's name (lower case, digits, hyphens; at most 20 characters so that the load balancer's and target group's names fit in 32)."
  type        = string
  default     = "ephemeralml"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name: 2 to 20 characters, lower case letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags for every resource that takes them."
  type        = map(string)
  default     = {}
}

# --- Network (an existing VPC) -------------------------------------------------------

variable "vpc_id" {
  description = "The existing VPC the instances and the load balancer live in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id: a VPC id, vpc-<hex>."
  }
}

variable "instance_subnet_ids" {
  description = "Subnets of the parent instances (private ones: the instances need no public address; they reach KMS and S3 through a NAT gateway or VPC endpoints). One per Availability Zone you want to use."
  type        = list(string)

  validation {
    condition     = length(var.instance_subnet_ids) >= 1 && alltrue([for s in var.instance_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "instance_subnet_ids: one or more subnet ids, subnet-<hex>."
  }
}

variable "nlb_subnet_ids" {
  description = "Subnets of the Network Load Balancer (public ones if nlb_internal is false). One per Availability Zone, the same zones as instance_subnet_ids."
  type        = list(string)

  validation {
    condition     = length(var.nlb_subnet_ids) >= 1 && alltrue([for s in var.nlb_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "nlb_subnet_ids: one or more subnet ids, subnet-<hex>."
  }
}

variable "nlb_internal" {
  description = "true: the load balancer has private addresses only (clients inside the VPC or peered networks). false: internet-facing."
  type        = bool
  default     = true
}

variable "nlb_deletion_protection" {
  description = "Deletion protection on the load balancer (turn off before a destroy)."
  type        = bool
  default     = true
}

variable "allowed_client_cidrs" {
  description = "IPv4 CIDRs allowed to reach the relay port through the load balancer. Nothing else reaches anything."
  type        = list(string)

  validation {
    condition = length(var.allowed_client_cidrs) >= 1 && alltrue([
      for c in var.allowed_client_cidrs :
      can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$", c)) && try(cidrsubnet(c, 0, 0) == c, false)
    ])
    error_message = "allowed_client_cidrs: one or more IPv4 CIDRs written as their network address (10.0.0.0/16, not 10.0.0.1/16)."
  }
}

variable "egress_cidrs" {
  description = "IPv4 CIDRs the instances may reach on TCP 443 (AWS KMS, S3, the package repository, SSM if enabled). The default allows any HTTPS destination, as a NAT gateway needs; with VPC endpoints for KMS and S3 (and a gateway endpoint's prefix list), narrow it to the VPC's CIDR. The enclave itself reaches only kms.REGION.amazonaws.com:443, whatever this says: the host's egress proxy allows nothing else."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition = length(var.egress_cidrs) >= 1 && alltrue([
      for c in var.egress_cidrs :
      can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$", c)) && try(cidrsubnet(c, 0, 0) == c, false)
    ])
    error_message = "egress_cidrs: one or more IPv4 CIDRs written as their network address."
  }
}

# --- Ports (ephemeralml/runtime/_ports.py) ---------------------------------------------

variable "base_port" {
  description = "EPHEMERALML_BASE_PORT of the host and the enclave image: the relay listens on BASE (the load balancer's listener and target port), the enclave on vsock BASE+5, the host's services on vsock BASE+6, its KMS egress on vsock BASE+7. Must be the base the EIF was built with."
  type        = number
  default     = 5000

  validation {
    condition     = var.base_port == floor(var.base_port) && var.base_port >= 1024 && var.base_port <= 65526
    error_message = "base_port: an integer from 1024 to 65526 (BASE+9 must be a port)."
  }
}

variable "health_port" {
  description = "TCP port of the host's health endpoint (GET /readyz: 200 while the enclave answers, 503 otherwise), EPHEMERALML_HEALTH_PORT. null: BASE+8, the host's own default (runtime/_ports.py). Only the load balancer reaches it. Not base_port (the relay's; BASE+5..BASE+7 are vsock ports and do not collide)."
  type        = number
  default     = null

  validation {
    condition     = var.health_port == null || try(var.health_port == floor(var.health_port) && var.health_port >= 1024 && var.health_port <= 65535, false)
    error_message = "health_port: null or an integer from 1024 to 65535."
  }
}

# --- Instances --------------------------------------------------------------------------

variable "instance_type" {
  description = "A Nitro instance type that supports enclaves, with vCPUs and memory for both the enclave (enclave_cpu_count, enclave_memory_mib) and the parent. Not burstable (t*) types, which have no enclave support."
  type        = string
  default     = "m6i.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[0-9]*[a-z]+$", var.instance_type)) && !can(regex("^t[0-9]", var.instance_type)) && !can(regex("\\.(nano|micro|small|medium)$", var.instance_type))
    error_message = "instance_type: an enclave-capable type (no t* types, nothing smaller than large)."
  }
}

variable "ami_id" {
  description = "AMI of the parent instances. null: the latest Amazon Linux 2023 of ami_architecture (from its public SSM parameter). The user data expects Amazon Linux 2023 (dnf, aws-nitro-enclaves-cli, python3.11)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id: null or an AMI id, ami-<hex>."
  }
}

variable "ami_architecture" {
  description = "Architecture of the default AMI: x86_64, or arm64 for Graviton instance types."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.ami_architecture)
    error_message = "ami_architecture: x86_64 or arm64."
  }
}

variable "root_device_name" {
  description = "The AMI's root device name (Amazon Linux 2023: /dev/xvda)."
  type        = string
  default     = "/dev/xvda"

  validation {
    condition     = can(regex("^/dev/[a-z0-9]+$", var.root_device_name))
    error_message = "root_device_name: a device path such as /dev/xvda."
  }
}

variable "root_volume_size_gib" {
  description = "Size of the encrypted root volume (the OS, the EIF, the host's virtual environment; no model plaintext ever lands on it)."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size_gib >= 8 && var.root_volume_size_gib <= 1024
    error_message = "root_volume_size_gib: from 8 to 1024."
  }
}

variable "ebs_kms_key_arn" {
  description = "KMS key for the root volume's encryption; null: the account's aws/ebs key. Never the model key (that one decrypts only for an attested enclave)."
  type        = string
  default     = null

  validation {
    condition     = var.ebs_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]{36}$", var.ebs_kms_key_arn))
    error_message = "ebs_kms_key_arn: null or a KMS key ARN."
  }
}

variable "min_size" {
  description = "Fewest parent instances (each runs one host and one enclave). 0 with desired_capacity 0 for the first apply, before a bundle is in the store (README.md)."
  type        = number
  default     = 2

  validation {
    condition     = var.min_size == floor(var.min_size) && var.min_size >= 0
    error_message = "min_size: an integer, 0 or more."
  }
}

variable "max_size" {
  description = "Most parent instances (at least min_size, checked at plan)."
  type        = number
  default     = 4

  validation {
    condition     = var.max_size == floor(var.max_size) && var.max_size >= 1
    error_message = "max_size: an integer, 1 or more."
  }
}

variable "desired_capacity" {
  description = "Parent instances to start with; null lets the Auto Scaling group keep what it has (between min_size and max_size)."
  type        = number
  default     = null

  validation {
    condition     = var.desired_capacity == null || try(var.desired_capacity == floor(var.desired_capacity) && var.desired_capacity >= 0, false)
    error_message = "desired_capacity: null or an integer, 0 or more."
  }
}

# --- The enclave ------------------------------------------------------------------------

variable "enclave_cpu_count" {
  description = "vCPUs the Nitro Enclaves allocator takes from the parent for the enclave (whole cores: an even number on x86 with two threads a core)."
  type        = number
  default     = 2

  validation {
    condition     = var.enclave_cpu_count == floor(var.enclave_cpu_count) && var.enclave_cpu_count >= 2
    error_message = "enclave_cpu_count: an integer, 2 or more."
  }
}

variable "enclave_memory_mib" {
  description = "Memory (MiB) the allocator reserves for the enclave and nitro-cli gives it: at least 4x the EIF's size (scripts/build_eif.sh prints the minimum), plus the decrypted models (in enclave memory only) and ONNX Runtime's sessions."
  type        = number
  default     = 4096

  validation {
    condition     = var.enclave_memory_mib == floor(var.enclave_memory_mib) && var.enclave_memory_mib >= 1024
    error_message = "enclave_memory_mib: an integer, 1024 or more."
  }
}

variable "enclave_cid" {
  description = "The enclave's vsock CID, given to nitro-cli run-enclave explicitly (the host dials vsock:CID:BASE+5). 16 is the first one nitro-cli would choose."
  type        = number
  default     = 16

  validation {
    condition     = var.enclave_cid == floor(var.enclave_cid) && var.enclave_cid >= 4 && var.enclave_cid <= 4294967294
    error_message = "enclave_cid: an integer from 4 to 4294967294 (0 to 3 are reserved)."
  }
}

variable "eif_s3_uri" {
  description = "s3://BUCKET/KEY.eif of the enclave image that scripts/build_eif.sh built. Its PCR0 must be one of enclave_pcr0: the instance checks (nitro-cli describe-eif) before it runs it, and KMS releases the model key to nothing else."
  type        = string

  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9!_.()/-]+\\.eif$", var.eif_s3_uri))
    error_message = "eif_s3_uri: s3://BUCKET/KEY ending in .eif (no wildcards)."
  }
}

variable "enclave_pcr0" {
  description = "PCR0 (the image's SHA-384, 96 hex) of every enclave image the model key may be released to: the build's measurements JSON, Measurements.PCR0. One normally; two during a rolling upgrade (the old image's and the new)."
  type        = list(string)

  validation {
    condition = length(var.enclave_pcr0) >= 1 && length(var.enclave_pcr0) <= 4 && alltrue([
      for p in var.enclave_pcr0 : can(regex("^[0-9a-fA-F]{96}$", p)) && !can(regex("^0{96}$", p))
    ])
    error_message = "enclave_pcr0: 1 to 4 PCR0 values, each 96 hex characters (SHA-384) and not all zeros (a debug-mode enclave's PCRs are zero and prove nothing)."
  }
}

variable "enclave_pcr8" {
  description = "PCR8 (96 hex: the SHA-384 of the EIF's signing certificate) when the EIF is signed; then KMS also demands it. null for an unsigned EIF."
  type        = string
  default     = null

  validation {
    condition     = var.enclave_pcr8 == null || (can(regex("^[0-9a-fA-F]{96}$", var.enclave_pcr8)) && !can(regex("^0{96}$", var.enclave_pcr8)))
    error_message = "enclave_pcr8: null or 96 hex characters, not all zeros."
  }
}

variable "host_release_s3_uri" {
  description = "s3://BUCKET/KEY.tar.gz of the host release: wheels/ (ephemeralml and its [host] dependencies, for pip --no-index) and systemd/ (ephemeralml-host.service and ephemeralml-enclave.service from deploy/systemd/). See README.md."
  type        = string

  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9!_.()/-]+\\.tar\\.gz$", var.host_release_s3_uri))
    error_message = "host_release_s3_uri: s3://BUCKET/KEY ending in .tar.gz (no wildcards)."
  }
}

variable "host_release_sha256" {
  description = "SHA-256 (64 hex) of the host release archive: the instance refuses any other bytes at that URI."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.host_release_sha256))
    error_message = "host_release_sha256: 64 lower-case hex characters."
  }
}

# --- The model key and the bundle store ------------------------------------------------

variable "model_owner_arn" {
  description = "IAM principal of the model owner (who runs ephemeral model package): it may GenerateDataKey and Encrypt under the model key, never Decrypt."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[A-Za-z0-9+=,.@_/-]+$", var.model_owner_arn))
    error_message = "model_owner_arn: an IAM role or user ARN."
  }
}

variable "key_admin_arns" {
  description = "Principals that administer the model key (policy, rotation, deletion), never use it. Empty: the account (arn:PARTITION:iam::ACCOUNT:root), so that IAM policies decide which admins; the key policy grants the account no Decrypt, so no IAM policy can. Whoever applies this module must be one of them (KMS refuses a policy that locks its author out)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.key_admin_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/[A-Za-z0-9+=,.@_/-]+|user/[A-Za-z0-9+=,.@_/-]+)$", a))])
    error_message = "key_admin_arns: IAM role, user or account-root ARNs."
  }
}

variable "kms_deletion_window_days" {
  description = "Days between scheduling the model key's deletion and its deletion (7 to 30). Deleting it makes every bundle under it unreadable forever."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days: from 7 to 30."
  }
}

variable "bundle_bucket_name" {
  description = "Name of the S3 bucket for encrypted model bundles; null: a generated name starting with NAME-bundles-."
  type        = string
  default     = null

  validation {
    condition     = var.bundle_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bundle_bucket_name))
    error_message = "bundle_bucket_name: null or a valid S3 bucket name."
  }
}

variable "model_prefix" {
  description = "Key prefix of the bundles in the bucket (the host's --store is s3://BUCKET/PREFIX; a bundle is PREFIX<model id>/{manifest.cose,model.key,model.enc}). The instances may read and list under it and nowhere else."
  type        = string
  default     = "models/"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.()-]+(/[A-Za-z0-9!_.()-]+)*/$", var.model_prefix))
    error_message = "model_prefix: a key prefix ending in /, no leading /, no wildcards (models/)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days an overwritten or deleted bundle object is kept as a noncurrent version (the host reads only current versions)."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days: 1 or more."
  }
}

variable "access_log_retention_days" {
  description = "Days the bundle bucket's server access logs are kept (who read which bundle, when)."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_retention_days >= 1
    error_message = "access_log_retention_days: 1 or more."
  }
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to the instance role, for Session Manager shells without SSH keys or open ports. Off by default (least privilege). Turning it on does not weaken the model key or the clients' data: the host is assumed hostile already, and whoever has a shell on it has what the host has (ciphertext, and role credentials that KMS honours only with an attested Recipient)."
  type        = bool
  default     = false
}
