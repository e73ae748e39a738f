# The model key. Bundles (docs/protocol.md §9) carry a data key that this key wrapped
# (GenerateDataKey by the model owner); the enclave has KMS unwrap it only to its own
# attestation (Decrypt with a Recipient, §10.3). The key policy is the whole of the
# protection: the instance role's credentials are readable by the host (§10.2), so
# what they may do must be worthless without an enclave whose image is the one named
# here. mock/_provision.py::enclave_key_policy is the same shape for the local KMS.
#
# Never StringNotEquals on these keys: a Decrypt without a Recipient has no
# kms:RecipientAttestation:* keys at all, and a negated operator on an absent key
# evaluates to true.

data "aws_iam_policy_document" "model_key" {
  # Administer, never use: no Decrypt, Encrypt, GenerateDataKey*, ReEncrypt* or
  # CreateGrant (a grant could hand Decrypt to anyone without the attestation
  # condition). With the account root as administrator this also "enables IAM
  # policies", but only for these actions.
  statement {
    sid    = "KeyAdministrationWithoutUse"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = local.key_admin_arns
    }
    actions = [
      "kms:CancelKeyDeletion",
      "kms:CreateAlias",
      "kms:DeleteAlias",
      "kms:DescribeKey",
      "kms:DisableKey",
      "kms:EnableKey",
      "kms:EnableKeyRotation",
      "kms:GetKeyPolicy",
      "kms:GetKeyRotationStatus",
      "kms:ListGrants",
      "kms:ListKeyPolicies",
      "kms:ListResourceTags",
      "kms:PutKeyPolicy",
      "kms:RevokeGrant",
      "kms:ScheduleKeyDeletion",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:UpdateAlias",
      "kms:UpdateDescription",
    ]
    resources = ["*"]
  }

  # The model owner packages bundles: a fresh data key per bundle, never a Decrypt.
  statement {
    sid    = "ModelOwnerWrapsOnly"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [var.model_owner_arn]
    }
    actions = [
      "kms:DescribeKey",
      "kms:Encrypt",
      "kms:GenerateDataKey",
    ]
    resources = ["*"]
  }

  # The only Decrypt: the instance role, with a Recipient attestation document whose
  # image digest (PCR0) is one of the built images', and, for a signed EIF, whose
  # signing certificate (PCR8) is the one named. KMS then returns the data key
  # encrypted to the enclave's attested public key (CiphertextForRecipient), never in
  # the clear; the host, holding the same credentials, gets nothing it can open.
  statement {
    sid    = "DecryptOnlyInTheAttestedEnclave"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.instance.arn]
    }
    actions   = ["kms:Decrypt"]
    resources = ["*"]

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

  # Belt and braces: whatever another statement or a later edit allows, no one
  # decrypts without a Recipient attestation (Null is true when the key is absent,
  # which is exactly the call without a Recipient).
  statement {
    sid    = "NoDecryptWithoutAttestation"
    effect = "Deny"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions   = ["kms:Decrypt"]
    resources = ["*"]

    condition {
      test     = "Null"
      variable = "kms:RecipientAttestation:ImageSha384"
      values   = ["true"]
    }
  }

  # Nor by the side doors: a grant can confer Decrypt without conditions, and
  # ReEncryptFrom decrypts inside KMS under this key's authority.
  statement {
    sid    = "NoGrantsNoReEncrypt"
    effect = "Deny"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions = [
      "kms:CreateGrant",
      "kms:ReEncryptFrom",
    ]
    resources = ["*"]
  }
}

resource "aws_kms_key" "model" {
  description              = "${var.name}: wraps model bundle data keys; Decrypt only to an attested enclave (PCR0${var.enclave_pcr8 == null ? "" : ", PCR8"})"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  deletion_window_in_days  = var.kms_deletion_window_days
  is_enabled               = true
  multi_region             = false
  policy                   = data.aws_iam_policy_document.model_key.json

  # Never bypass: KMS checks that whoever applies this can still administer the key.
  bypass_policy_lockout_safety_check = false

  tags = local.tags
}

resource "aws_kms_alias" "model" {
  name          = "alias/${var.name}-model"
  target_key_id = aws_kms_key.model.key_id
}
