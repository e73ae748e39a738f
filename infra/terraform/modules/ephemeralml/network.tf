# Who reaches what. Clients reach the load balancer's relay port, from
# allowed_client_cidrs only; the load balancer reaches the instances' relay port and
# their health port; nothing else reaches the instances at all (no SSH). The
# instances reach HTTPS (KMS for the enclave through the host's egress proxy, S3 for
# bundles and artifacts, the package repository at boot).
#
# The relay's traffic is end-to-end encrypted between client and enclave (HPKE, and
# the attestation is checked before the first byte of a request), so the load
# balancer forwards TCP: there is nothing for TLS at the load balancer to add, and it
# would be one more place holding a key. Client IP preservation stays on, so the
# relay's per-source limits (docs/security.md, "Limits before authentication") see
# real client addresses.

resource "aws_security_group" "nlb" {
  name        = "${var.name}-nlb"
  description = "ephemeralml load balancer: the relay port from allowed CIDRs in; relay and health ports to the instances out"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-nlb" })
}

resource "aws_security_group" "instance" {
  name        = "${var.name}-instance"
  description = "ephemeralml parent instances: relay and health ports from the load balancer only; HTTPS out"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-instance" })
}

resource "aws_vpc_security_group_ingress_rule" "nlb_relay_from_clients" {
  for_each          = toset(var.allowed_client_cidrs)
  security_group_id = aws_security_group.nlb.id
  description       = "Clients to the relay port (ciphertext only)"
  ip_protocol       = "tcp"
  from_port         = local.relay_port
  to_port           = local.relay_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_relay_to_instances" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "Load balancer to the instances' relay port"
  ip_protocol                  = "tcp"
  from_port                    = local.relay_port
  to_port                      = local.relay_port
  referenced_security_group_id = aws_security_group.instance.id
}

resource "aws_vpc_security_group_egress_rule" "nlb_health_to_instances" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "Load balancer health checks to the instances' /readyz"
  ip_protocol                  = "tcp"
  from_port                    = local.health_port
  to_port                      = local.health_port
  referenced_security_group_id = aws_security_group.instance.id
}

# The instances accept the relay port from the load balancer's security group only:
# with client IP preservation the packets carry the client's address, and a rule that
# names the load balancer's group still matches them (while a client that found an
# instance's address directly does not).
resource "aws_vpc_security_group_ingress_rule" "instance_relay_from_nlb" {
  security_group_id            = aws_security_group.instance.id
  description                  = "Relay port from the load balancer only"
  ip_protocol                  = "tcp"
  from_port                    = local.relay_port
  to_port                      = local.relay_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_ingress_rule" "instance_health_from_nlb" {
  security_group_id            = aws_security_group.instance.id
  description                  = "Health port (/readyz) from the load balancer only"
  ip_protocol                  = "tcp"
  from_port                    = local.health_port
  to_port                      = local.health_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_egress_rule" "instance_https" {
  for_each          = toset(var.egress_cidrs)
  security_group_id = aws_security_group.instance.id
  description       = "HTTPS out: AWS KMS (the enclave's only destination), S3, packages"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:NLB access logs are written for TLS listeners only; this listener is TCP (the protocol is end-to-end encrypted to the enclave), and the relay logs every connection's endpoints, byte counts and duration itself.
  name                             = "${var.name}-nlb"
  load_balancer_type               = "network"
  internal                         = var.nlb_internal
  subnets                          = var.nlb_subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.nlb_deletion_protection
  ip_address_type                  = "ipv4"
  tags                             = local.tags
}

resource "aws_lb_target_group" "relay" {
  name                 = "${var.name}-relay"
  target_type          = "instance"
  protocol             = "TCP"
  port                 = local.relay_port
  vpc_id               = var.vpc_id
  preserve_client_ip   = true
  deregistration_delay = 60

  # Ready means: the host is up and relays to an enclave that loaded its models
  # (which needed the attested key release). An instance whose enclave never got the
  # key never takes traffic, and the Auto Scaling group replaces it.
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = tostring(local.health_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }

  tags = local.tags
}

# TCP, not TLS: see the top of this file (the load balancer only ever carries ciphertext).
resource "aws_lb_listener" "relay" {
  load_balancer_arn = aws_lb.this.arn
  port              = local.relay_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.relay.arn
  }

  tags = local.tags
}
