# The parent instances: one host and one enclave each, identical, behind the load
# balancer. They keep no state a client depends on: a client verifies whichever
# enclave it reaches against its own PCR policy (docs/scale.md).

resource "aws_launch_template" "host" {
  #checkov:skip=CKV_AWS_341:Hop limit 2 on purpose (IMDSv2 tokens still required): the host may run in a container on the parent (one more hop). The role's credentials are not what protects the model key, the key policy's attestation condition is (docs/protocol.md §10.2).
  name_prefix            = "${var.name}-host-"
  description            = "ephemeralml parent instance: Nitro Enclaves on, IMDSv2 only, encrypted root volume"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  ebs_optimized          = true
  update_default_version = true

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    region              = local.region
    base_port           = var.base_port
    health_port         = local.health_port
    store_url           = local.store_url
    eif_s3_uri          = var.eif_s3_uri
    enclave_pcr0        = join(" ", [for p in var.enclave_pcr0 : lower(p)])
    enclave_pcr8        = var.enclave_pcr8 == null ? "" : lower(var.enclave_pcr8)
    enclave_cpu_count   = var.enclave_cpu_count
    enclave_memory_mib  = var.enclave_memory_mib
    enclave_cid         = var.enclave_cid
    host_release_s3_uri = var.host_release_s3_uri
    host_release_sha256 = var.host_release_sha256
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  # The parent may create a Nitro enclave.
  enclave_options {
    enabled = true
  }

  # IMDSv2 only: a token from a PUT is required, so a server-side request forgery
  # through some HTTP client on the host cannot read the role's credentials with a
  # plain GET.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
    http_protocol_ipv6          = "disabled"
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  network_interfaces {
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [aws_security_group.instance.id]
  }

  block_device_mappings {
    device_name = var.root_device_name
    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gib
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-host" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.name}-host" })
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "host" {
  name_prefix         = "${var.name}-host-"
  vpc_zone_identifier = var.instance_subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  target_group_arns   = [aws_lb_target_group.relay.arn]

  # Healthy means the load balancer's /readyz check passes, not merely that the
  # instance runs: an instance whose enclave never loaded its model is replaced.
  health_check_type         = "ELB"
  health_check_grace_period = 600

  launch_template {
    id      = aws_launch_template.host.id
    version = aws_launch_template.host.latest_version
  }

  # A new launch template (a new EIF, new PCRs) rolls through the group. Keep the old
  # and the new PCR0 in enclave_pcr0 (and in the clients' policy) until it is done.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
      instance_warmup        = 300
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-host" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    precondition {
      condition     = var.max_size >= var.min_size
      error_message = "max_size must be at least min_size."
    }
    precondition {
      condition     = var.desired_capacity == null || try(var.desired_capacity >= var.min_size && var.desired_capacity <= var.max_size, false)
      error_message = "desired_capacity must lie between min_size and max_size."
    }
    precondition {
      # The host's TCP ports: the relay on BASE and the health endpoint
      # (BASE+5..BASE+7 are vsock ports).
      condition     = local.health_port != var.base_port
      error_message = "health_port must differ from base_port (the relay's port)."
    }
  }
}
