"""What a stored user query keeps of its user: a keyed hash of the id, the text with e-mail addresses and phone numbers masked."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from scrapy.settings import Settings

from scrapy_checkpoint.queries import mask_query, user_key
from scrapy_checkpoint.settings import QUERY_SECRET_ENV, CheckpointSettings, query_secret

SECRET = "4f1c8e0b9a7d2c3e"

# (text, as stored): texts a shopper may type, with and without contact details.
MASKED = [
    # nothing personal: prices, sizes, years, model numbers, ranges, codes stay
    ("iphone 15 pro max 256gb", "iphone 15 pro max 256gb"),
    ("red dress under $49.99", "red dress under $49.99"),
    ("size 10 running shoes", "size 10 running shoes"),
    ("jeans 32x34", "jeans 32x34"),
    ("best laptop 2024", "best laptop 2024"),
    ("nike air max 90 size 10.5", "nike air max 90 size 10.5"),
    ("samsung tv 55 inch under 1,299", "samsung tv 55 inch under 1,299"),
    ("rtx 4090 under €1.999", "rtx 4090 under €1.999"),
    ("sony wh-1000xm4 headphones", "sony wh-1000xm4 headphones"),
    ("galaxy sm-g991b case", "galaxy sm-g991b case"),
    ("between 100 and 200 dollars", "between 100 and 200 dollars"),
    ("tv 1000-2000", "tv 1000-2000"),
    ("sofa price 500-1000", "sofa price 500-1000"),
    ("boots sizes 38 39 40 41", "boots sizes 38 39 40 41"),
    ("isbn 9780306406157", "isbn 9780306406157"),
    ("upc 012345678905", "upc 012345678905"),
    ("delivered by 2024-05-01", "delivered by 2024-05-01"),
    ("delivered by 01.05.2024", "delivered by 01.05.2024"),
    ("budget 1 500 000 won", "budget 1 500 000 won"),
    ("tv under 10.000.000 vnd", "tv under 10.000.000 vnd"),
    ("laptop under 100 000 000 vnd", "laptop under 100 000 000 vnd"),
    ("price: 12345.67", "price: 12345.67"),
    ('4k 120hz monitor 27"', '4k 120hz monitor 27"'),
    ("ps5 and 2 controllers under 600 eur", "ps5 and 2 controllers under 600 eur"),
    # e-mail addresses
    ("mail me at jane.doe+shop@example.co.uk", "mail me at [email]"),
    ("JOHN_SMITH@Mail.Example.com red shoes", "[email] red shoes"),
    ("a@b.io, c.d@e-f.org: cheapest kettle", "[email], [email]: cheapest kettle"),
    # phone numbers, national and international
    ("call 555-123-4567", "call [phone]"),
    ("call me at (555) 123-4567 about the sofa", "call me at [phone] about the sofa"),
    ("(212) 555-0199", "[phone]"),
    ("555.123.4567", "[phone]"),
    ("5551234567 red shoes", "[phone] red shoes"),
    ("my number is 555 123 4567 thanks", "my number is [phone] thanks"),
    ("text 555-1234 when in stock", "text [phone] when in stock"),
    ("+1 (555) 123 4567", "[phone]"),
    ("dress $50 call +1-555-123-4567", "dress $50 call [phone]"),
    ("+44 20 7946 0958", "[phone]"),
    ("0044 20 7946 0958", "[phone]"),
    ("07700 900123", "[phone]"),
    ("020 7946 0958", "[phone]"),
    ("+33 6 12 34 56 78", "[phone]"),
    ("06 12 34 56 78", "[phone]"),
    ("+49-30-1234567", "[phone]"),
    ("+49 (0)30 1234567", "[phone]"),
    ("+34 612 345 678", "[phone]"),
    ("612 345 678", "[phone]"),
    ("+86 138 0013 8000", "[phone]"),
    ("+91 98765 43210", "[phone]"),
    ("whatsapp +55 11 91234-5678", "whatsapp [phone]"),
    ("iphone 15, 555-123-4567.", "iphone 15, [phone]."),
    # both
    ("red dress size 8 under $50, jane@shop.example or +1 555 123 4567",
     "red dress size 8 under $50, [email] or [phone]"),
]


@pytest.mark.parametrize(("text", "stored"), MASKED)
def test_mask_query(text, stored):
    assert mask_query(text) == stored


def test_masking_twice_changes_nothing():
    for text, _ in MASKED:
        assert mask_query(mask_query(text)) == mask_query(text)


def test_user_key_is_a_keyed_hash():
    key = user_key("alice@example.com", SECRET)
    assert key == hmac.new(SECRET.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert len(key) == 64 and "alice" not in key
    assert user_key("alice@example.com", SECRET) == key  # a user's history can be found
    assert user_key("bob@example.com", SECRET) != key
    assert user_key("alice@example.com", SECRET + "x") != key
    # Not the plain hash either: without the secret, hashing likely ids finds no one.
    assert key != hashlib.sha256(b"alice@example.com").hexdigest()


@pytest.mark.parametrize("secret", ["", None])
def test_user_key_needs_a_secret(secret):
    with pytest.raises(ValueError, match=rf"CHECKPOINT_QUERY_SECRET .*{QUERY_SECRET_ENV}"):
        user_key("alice", secret)


def _settings(**values):
    return Settings({"CHECKPOINT_ENABLED": True, **values})


def test_secret_from_the_setting_or_the_environment(monkeypatch):
    monkeypatch.delenv(QUERY_SECRET_ENV, raising=False)
    assert CheckpointSettings.from_settings(_settings()).query_secret is None
    assert CheckpointSettings.from_settings(_settings(CHECKPOINT_QUERY_SECRET=SECRET)).query_secret == SECRET
    monkeypatch.setenv(QUERY_SECRET_ENV, "from-env")
    assert CheckpointSettings.from_settings(_settings()).query_secret == "from-env"
    assert query_secret(_settings(CHECKPOINT_QUERY_SECRET="")) == "from-env"
    assert CheckpointSettings.from_settings(_settings(CHECKPOINT_QUERY_SECRET=SECRET)).query_secret == SECRET
    # Read with checkpoints off too (a command may need it).
    assert query_secret(Settings()) == "from-env"


def test_secret_never_in_the_repr():
    settings = CheckpointSettings.from_settings(_settings(CHECKPOINT_QUERY_SECRET=SECRET))
    assert SECRET not in repr(settings)


def test_secret_must_be_a_string(monkeypatch):
    monkeypatch.delenv(QUERY_SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match=r"^CHECKPOINT_QUERY_SECRET \(of type int\) must be a long random string") as info:
        CheckpointSettings.from_settings(_settings(CHECKPOINT_QUERY_SECRET=918273645))
    assert "918273645" not in str(info.value)


def test_secret_must_not_be_blank(monkeypatch):
    monkeypatch.delenv(QUERY_SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match=r"^CHECKPOINT_QUERY_SECRET \(blank\) must be a long random string"):
        CheckpointSettings.from_settings(_settings(CHECKPOINT_QUERY_SECRET="   "))


def test_secret_from_the_environment_must_not_be_blank(monkeypatch):
    monkeypatch.setenv(QUERY_SECRET_ENV, " ")
    with pytest.raises(ValueError, match=rf"^The environment variable {QUERY_SECRET_ENV} \(blank\) must be"):
        CheckpointSettings.from_settings(_settings())
