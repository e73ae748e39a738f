output "nlb_dns_name" {
  description = "Where clients connect (port: relay_port)."
  value       = module.ephemeralml.nlb_dns_name
}

output "relay_port" {
  description = "The relay port (base_port)."
  value       = module.ephemeralml.relay_port
}

output "bundle_bucket" {
  description = "S3 bucket of the encrypted model bundles."
  value       = module.ephemeralml.bundle_bucket
}

output "store_url" {
  description = "s3://BUCKET/PREFIX to upload bundles to."
  value       = module.ephemeralml.store_url
}

output "kms_key_arn" {
  description = "The model key, for ephemeral model package --kms-key-id."
  value       = module.ephemeralml.kms_key_arn
}

output "instance_role_arn" {
  description = "The parent instances' role (the only Decrypt principal, attested only)."
  value       = module.ephemeralml.instance_role_arn
}
