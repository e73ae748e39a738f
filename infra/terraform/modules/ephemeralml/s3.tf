# The bundle store: model.enc, model.key and manifest.cose per model under
# model_prefix (docs/protocol.md §9). Everything in it is ciphertext or signed already
# (AES-256-GCM under a data key only an attested enclave gets; an owner-signed
# manifest), so the bucket's job is availability and integrity of the history:
# versioning, no public access, TLS only, access logs of who read what.

resource "aws_s3_bucket" "bundles" {
  #checkov:skip=CKV_AWS_145:SSE-S3 on purpose: the bundles are already AES-256-GCM ciphertext under a data key that KMS releases only to an attested enclave; SSE-KMS under the model key would need a Decrypt without attestation for the instance role, and under a second key adds nothing to confidentiality.
  #checkov:skip=CKV_AWS_144:No cross-region replication: the model key is single-region, so a replica could not be opened in another region; bundles are reproducible by the owner (ephemeral model package) and versioned here.
  #checkov:skip=CKV2_AWS_62:No event notifications: nothing consumes them; the instances read bundles at enclave start, and the access logs record every read.
  bucket        = var.bundle_bucket_name
  bucket_prefix = var.bundle_bucket_name == null ? "${var.name}-bundles-" : null
  force_destroy = false
  tags          = local.tags
}

resource "aws_s3_bucket_versioning" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "bundles" {
  bucket                  = aws_s3_bucket.bundles.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "bundles" {
  bucket = aws_s3_bucket.bundles.id

  rule {
    id     = "noncurrent-versions-and-unfinished-uploads"
    status = "Enabled"
    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.bundles]
}

resource "aws_s3_bucket_logging" "bundles" {
  bucket        = aws_s3_bucket.bundles.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3/${aws_s3_bucket.bundles.id}/"
}

data "aws_iam_policy_document" "bundles" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [
      aws_s3_bucket.bundles.arn,
      "${aws_s3_bucket.bundles.arn}/*",
    ]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  policy = data.aws_iam_policy_document.bundles.json

  # A policy on a bucket whose public access block is not yet in place could be
  # judged public; order them.
  depends_on = [aws_s3_bucket_public_access_block.bundles]
}

# --- Server access logs of the bundle bucket -------------------------------------------

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports SSE-S3 only on its target bucket, not SSE-KMS.
  #checkov:skip=CKV_AWS_144:Access logs stay in the region of the bucket they describe; no cross-region replication.
  #checkov:skip=CKV2_AWS_62:No event notifications: nothing consumes the access logs as they arrive.
  bucket_prefix = "${var.name}-access-logs-"
  force_destroy = false
  tags          = local.tags
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}

    expiration {
      days = var.access_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.access_logs]
}

data "aws_iam_policy_document" "access_logs" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [
      aws_s3_bucket.access_logs.arn,
      "${aws_s3_bucket.access_logs.arn}/*",
    ]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # S3 server access log delivery, from the bundle bucket of this account only.
  statement {
    sid     = "S3ServerAccessLogDelivery"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    resources = ["${aws_s3_bucket.access_logs.arn}/s3/${aws_s3_bucket.bundles.id}/*"]
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.bundles.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  policy     = data.aws_iam_policy_document.access_logs.json
  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}
