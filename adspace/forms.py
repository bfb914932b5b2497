"""Forms for creating a campaign and uploading an ad. Every refusal is a sentence to act on."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from accounts.money import MAX_SATS, BTCField

from . import gateway, images

MAX_SLOT_HOURS = 8760  # a year
MAX_NICKNAME = 64
MAX_HOVER_TEXT = 512
MAX_URL = 2048
MAX_TITLE = 80
MAX_DESCRIPTION = 1000
MAX_IMAGE_MB = images.MAX_IMAGE_BYTES // (1024 * 1024)
TOO_BIG = f"The image is larger than {MAX_IMAGE_MB} MB."

# ASCII digits only: int() would also accept Arabic-Indic or full-width digits, and Django's
# IntegerField "24.0".
_WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")


# Bidi embeddings, overrides and isolates: invisible, and they let a nickname or hover text
# display as something other than what it is. (Other format characters, like the zero-width
# joiner inside emoji, are harmless and stay allowed.)
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in text)


class WholeNumberField(forms.IntegerField):
    """An integer typed in ASCII digits and nothing else ("24", not "24.0", "+24" or "2e1")."""

    def to_python(self, value):
        if value in self.empty_values:
            return None
        text = str(value).strip()
        if not _WHOLE_NUMBER.fullmatch(text):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return int(text)


def _side_field(label: str) -> WholeNumberField:
    low, high = images.MIN_AD_SIDE, images.MAX_AD_SIDE
    message = f"{label} must be a whole number of pixels from {low} to {high}."
    return WholeNumberField(
        label=f"{label} (px)",
        min_value=low,
        max_value=high,
        error_messages={
            "required": message,
            "invalid": message,
            "min_value": message,
            "max_value": message,
        },
        widget=forms.NumberInput(attrs={"min": low, "max": high, "step": 1}),
    )


class CampaignForm(forms.Form):
    title = forms.CharField(
        label="Title",
        max_length=MAX_TITLE,
        help_text="What buyers see first: your site's name, say.",
        error_messages={
            "required": "Give the campaign a title.",
            "max_length": f"Titles are at most {MAX_TITLE} characters.",
        },
    )
    site_url = forms.CharField(
        label="Your site's address",
        max_length=MAX_URL,
        strip=False,
        initial="https://",
        help_text="Where the ad will appear, so buyers can look at it.",
        error_messages={
            "required": "Enter the web address of the site where the ad appears.",
            "max_length": f"Addresses are at most {MAX_URL} characters.",
        },
        widget=forms.URLInput(attrs={"inputmode": "url"}),
    )
    description = forms.CharField(
        label="Description",
        max_length=MAX_DESCRIPTION,
        required=False,
        help_text=f"Who reads your site, and anything a buyer should know. At most {MAX_DESCRIPTION} characters.",
        error_messages={"max_length": f"Descriptions are at most {MAX_DESCRIPTION} characters."},
        widget=forms.Textarea(attrs={"rows": 4, "maxlength": MAX_DESCRIPTION}),
    )
    min_price = BTCField(label="Minimum price (BTC)")
    slot_hours = WholeNumberField(
        label="Length of one slot (hours)",
        initial=24,
        min_value=1,
        max_value=MAX_SLOT_HOURS,
        error_messages={
            "required": "Enter the length of one slot in hours.",
            "invalid": f"Enter the slot length as a whole number of hours, 1 to {MAX_SLOT_HOURS}.",
            "min_value": "A slot lasts at least 1 hour.",
            "max_value": f"A slot lasts at most {MAX_SLOT_HOURS} hours (a year).",
        },
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_SLOT_HOURS, "step": 1}),
    )
    width = _side_field("Ad width")
    height = _side_field("Ad height")
    disallowed = forms.MultipleChoiceField(
        label="Ads you do not accept",
        choices=[(c, c) for c in gateway.CATEGORIES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "invalid_choice": "%(value)s is not one of the categories you can refuse.",
        },
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read here rather than at import, so the configured minimum is the one in force.
        minimum = settings.MIN_CAMPAIGN_PRICE_SATS
        field = self.fields["min_price"]
        field.min_sats, field.max_sats = minimum, MAX_SATS
        field.initial = minimum
        field.help_text = f"At least {field.prepare_value(minimum)} BTC."
        # Defined below the validators they use.
        self.fields["title"].validators += [validate_plain_text, validate_no_markup]
        self.fields["site_url"].validators.append(validate_site_url)
        self.fields["description"].validators.append(validate_description)


class CampaignEditForm(CampaignForm):
    """The owner's edit: the details always; the terms (price, length, size) only while nothing
    is sold. Terms fields left out of the post (the page disables them once a slot is sold) are
    left as they are."""

    TERMS_FIELDS = ("min_price", "slot_hours", "width", "height")

    def __init__(self, *args, terms_editable: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.TERMS_FIELDS:
            self.fields[name].required = False
            if not terms_editable:
                self.fields[name].disabled = True

    def changes(self) -> dict:
        """The campaign doc fields this edit sets."""
        data = self.cleaned_data
        out = {
            "title": data["title"],
            "siteUrl": data["site_url"],
            "description": data["description"],
            "disallowed": data["disallowed"],
        }
        for name, key in zip(self.TERMS_FIELDS, gateway.TERMS, strict=True):
            if not self.fields[name].disabled and data.get(name) is not None:
                out[key] = data[name]
        return out


def validate_ad_url(url: str) -> None:
    """Only absolute http(s) links: a stored ad URL ends up in href attributes on other sites."""
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in url):
        # Browsers drop tabs and newlines inside URLs, so "java\tscript:" would still run.
        raise ValidationError("The link cannot contain spaces or control characters.")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValidationError("That is not a valid link.") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValidationError(
            "The link must be a full web address starting with http:// or https://."
        )
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ValidationError("That is not a valid web address.") from None


def validate_site_url(url: str) -> None:
    """A seller's site address: an http(s) link, without a user name or password in it."""
    validate_ad_url(url)
    if "@" in urlsplit(url).netloc:
        raise ValidationError("The address cannot contain a user name or password.")


def validate_plain_text(text: str) -> None:
    if _has_control_chars(text):
        raise ValidationError("Use plain text, without control or invisible characters.")


def validate_no_markup(text: str) -> None:
    # Shown escaped anyway; refused so a title never reads as code on a page that quotes it.
    if "<" in text or ">" in text:
        raise ValidationError("Use plain text: the characters < and > are not allowed.")


def validate_description(text: str) -> None:
    """Plain text over several lines: line breaks are the only control characters allowed."""
    validate_plain_text(text.replace("\r\n", "\n").replace("\n", ""))
    validate_no_markup(text)


class AdForm(forms.Form):
    nickname = forms.CharField(
        label="Nickname",
        max_length=MAX_NICKNAME,
        help_text="Only you see this; it names the ad when you buy a slot.",
        validators=[validate_plain_text],
        error_messages={
            "required": "Give the ad a nickname.",
            "max_length": f"Nicknames are at most {MAX_NICKNAME} characters.",
        },
    )
    hover_text = forms.CharField(
        label="Hover text",
        max_length=MAX_HOVER_TEXT,
        help_text="Shown when someone points at the ad, and read out by screen readers.",
        validators=[validate_plain_text],
        error_messages={
            "required": "Write the text shown when someone points at the ad.",
            "max_length": f"Hover text is at most {MAX_HOVER_TEXT} characters.",
        },
    )
    url = forms.CharField(
        label="Link",
        max_length=MAX_URL,
        # Not stripped: a URL with spaces is refused rather than quietly changed.
        strip=False,
        initial="https://",
        validators=[validate_ad_url],
        error_messages={
            "required": "Enter the web address the ad links to.",
            "max_length": f"Links are at most {MAX_URL} characters.",
        },
        widget=forms.URLInput(attrs={"inputmode": "url"}),
    )
    width = _side_field("Width")
    height = _side_field("Height")
    image = forms.FileField(
        label="Image",
        help_text=(
            f"PNG, JPEG or GIF (not animated), exactly the width and height above, "
            f"at most {MAX_IMAGE_MB} MB."
        ),
        error_messages={
            "required": "Choose the image file.",
            "empty": "The file is empty.",
            "invalid": "Choose the image file.",
        },
        widget=forms.ClearableFileInput(attrs={"accept": "image/png,image/jpeg,image/gif"}),
    )
    busy = ""  # set when the image could not be checked for now (the server is busy)

    def clean(self):
        data = super().clean()
        upload = data.get("image")
        width, height = data.get("width"), data.get("height")
        if upload is None or width is None or height is None:
            return data
        # Refused by its declared size before a byte of it is read.
        if upload.size > images.MAX_IMAGE_BYTES:
            self.add_error("image", TOO_BIG)
            return data
        try:
            data["validated"] = images.validate_ad_image(upload.read(), width, height)
        except images.ImageRejected as exc:
            if exc.code == "busy":
                self.busy = exc.message  # not the file's fault: the view answers 503
            self.add_error("image", exc.message)
        return data
