output "nlb_dns_name" {
  description = "Where clients connect: ephemeral attest/embed --host NLB_DNS_NAME:BASE (the relay port)."
  value       = aws_lb.this.dns_name
}

output "relay_port" {
  description = "The load balancer's TCP listener and the relay port (base_port)."
  value       = local.relay_port
}

output "bundle_bucket" {
  description = "S3 bucket of the encrypted model bundles."
  value       = aws_s3_bucket.bundles.id
}

output "store_url" {
  description = "The host's model store, s3://BUCKET/PREFIX: upload bundles here (ephemeral model upload BUNDLE --s3 STORE_URL)."
  value       = local.store_url
}

output "kms_key_arn" {
  description = "The model key: give it to ephemeral model package (--kms-key-id)."
  value       = aws_kms_key.model.arn
}

output "kms_key_alias" {
  description = "Alias of the model key."
  value       = aws_kms_alias.model.name
}

output "instance_role_arn" {
  description = "The parent instances' role: the only principal the key policy lets Decrypt, and only with an attested Recipient."
  value       = aws_iam_role.instance.arn
}

output "autoscaling_group_name" {
  description = "The Auto Scaling group of parent instances."
  value       = aws_autoscaling_group.host.name
}

output "instance_security_group_id" {
  description = "Security group of the parent instances."
  value       = aws_security_group.instance.id
}

output "nlb_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.nlb.id
}
