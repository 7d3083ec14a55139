"""The scanner on each kind of credential, and on text that only looks like one."""

import json

import pytest
from clasp_credential_guard.scan import KINDS, entropy, find_credential

PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
# Built from pieces so that no scanner of this repository's files sees a whole token.
GITHUB = "ghp" + "_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
SLACK = "xox" + "b-" + "1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
ANTHROPIC = "sk-ant-" + "api03-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa_9Zy8Xw7Vu6"
OPENAI = "sk-proj-" + "Ab3De6Gh9Jk2Mn5Pq8St1Vw4Yz7Bc0Ef3Hi6Kl9No2Qr5Tu8Wx1Za4"
AWS_ID = "AKIA" + "Z7Q2M4X9W1R8T5Y3"
AWS_SECRET = "q8Z/3kT9mX2vB7nR4pL6wY1cF5hJ0dG+sA9eU3iO"

FOUND = [
    (f"here is my key:\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----", "private_key"),
    (f"-----BEGIN OPENSSH PRIVATE KEY-----\\n{PEM_BODY}\\n", "private_key"),
    (json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "abc",
                 "private_key": f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n"}),
     "gcp_service_account"),
    (f"[default]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n", "aws_access_key"),
    (f"export GITHUB_TOKEN={GITHUB}", "github_token"),
    (f"slack bot token {SLACK} please", "slack_token"),
    (f"ANTHROPIC_API_KEY={ANTHROPIC}", "anthropic_key"),
    (f"client = OpenAI(api_key='{OPENAI}')", "openai_key"),
    ("DATABASE_PASSWORD=Xq7#pL9vR2m!Zk4", "password"),
    ('{"password": "t9!Kd2#Lm8@Qz5"}', "password"),
]


@pytest.mark.parametrize(("text", "kind"), FOUND)
def test_each_kind_is_found(text: str, kind: str) -> None:
    assert kind in KINDS
    assert find_credential(text) == kind
    assert find_credential("some code before\n" * 50 + text + "\nand after") == kind


NOT_CREDENTIALS = [
    "-----BEGIN PRIVATE KEY----- is the header of a PKCS#8 key",
    "the AWS docs use AKIAIOSFODNN7EXAMPLE with wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    f"an access key id alone: {AWS_ID}",
    "password=${DB_PASSWORD}",
    "password: <your password here>",
    "password = hunter2hunter2",
    "set api_key=********************** in the UI",
    "sk-proj is the prefix of OpenAI project keys",
    "def check(password: str) -> bool: return len(password) > 8",
    "x" * 21_000,
]


@pytest.mark.parametrize("text", NOT_CREDENTIALS)
def test_lookalikes_are_not_credentials(text: str) -> None:
    assert find_credential(text) is None


def test_kinds_limit_what_counts() -> None:
    text = f"token {GITHUB} and DB_PASSWORD=Xq7#pL9vR2m!Zk4"
    assert find_credential(text, frozenset({"password"})) == "password"
    assert find_credential(text, frozenset({"slack_token"})) is None


def test_entropy() -> None:
    assert entropy("") == 0.0
    assert entropy("aaaa") == 0.0
    assert entropy("abcd") == 2.0
