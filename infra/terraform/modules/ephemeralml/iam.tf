# The parent instances' role. The host reads its temporary credentials from IMDSv2 and
# hands them to the enclave, which signs its own KMS Decrypt with them
# (docs/protocol.md §10.2): the host holds them too, so nothing here may be worth
# anything to a hostile host beyond ciphertext it already relays.

data "aws_iam_policy_document" "instance_assume" {
  statement {
    sid     = "Ec2AssumesTheInstanceRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name                 = "${var.name}-instance"
  description          = "ephemeralml parent instances: read bundles and the release artifacts; KMS Decrypt only for an attested enclave"
  assume_role_policy   = data.aws_iam_policy_document.instance_assume.json
  max_session_duration = 3600
  tags                 = local.tags
}

data "aws_iam_policy_document" "instance" {
  # The host's model store: GetObject under the model prefix, nothing else.
  statement {
    sid       = "ReadModelBundles"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.bundles.arn}/${var.model_prefix}*"]
  }

  # Listing, only under the model prefix (so a missing object is NoSuchKey, not
  # AccessDenied, and the host's error says which bundle is missing).
  statement {
    sid       = "ListModelBundles"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.bundles.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.model_prefix, "${var.model_prefix}*"]
    }
  }

  # The two release artifacts, by exact key: the EIF and the host release archive.
  statement {
    sid     = "ReadReleaseArtifacts"
    effect  = "Allow"
    actions = ["s3:GetObject"]
    resources = [
      "arn:${local.partition}:s3:::${local.eif_bucket}/${local.eif_key}",
      "arn:${local.partition}:s3:::${local.release_bucket}/${local.release_key}",
    ]
  }

  # What the key policy grants, and no more: the same attestation condition. The key
  # policy names this role directly, so this statement changes nothing today; it keeps
  # the role's own policy from ever being the wider one.
  statement {
    sid       = "DecryptOnlyInTheAttestedEnclave"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.model.arn]

    condition {
      test     = "StringEqualsIgnoreCase"
      variable = "kms:RecipientAttestation:ImageSha384"
      values   = var.enclave_pcr0
    }

    dynamic "condition" {
      for_each = var.enclave_pcr8 == null ? [] : [var.enclave_pcr8]
      content {
        test     = "StringEqualsIgnoreCase"
        variable = "kms:RecipientAttestation:PCR8"
        values   = [condition.value]
      }
    }
  }
}

resource "aws_iam_role_policy" "instance" {
  name   = "${var.name}-instance"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

# Optional: Session Manager instead of SSH (no key pair, no open port). See the
# variable's description for why it does not weaken the model key or client data.
resource "aws_iam_role_policy_attachment" "ssm" {
  count      = var.enable_ssm_session_manager ? 1 : 0
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "instance" {
  name = "${var.name}-instance"
  role = aws_iam_role.instance.name
  tags = local.tags
}
