"""Turn client input (encoded images, JSON tensors or text) into a batch the model accepts:
float32 for images and tensors, an array of str for text."""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .release import InputSpec, Spec, TensorSpec, TextSpec


class InputError(ValueError):
    """Client input the model cannot take. ``code`` names the problem for clients; the HTTP
    status each code answers with is the API's business (errors.py), not this module's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Modes holding more than 8 bits per channel; Pillow's convert() clips them, so they are
# rescaled by hand, after the resize (on the small image, never on a full-size float copy).
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# The formats an upload may be in: the common photo, web and scan formats, each of which Pillow
# opens from its header alone. Pillow reads dozens more (PSD, FITS, SGI, SPIDER, ...) that no
# client sends, and each is more parser to attack; ICO is out too: Pillow decodes an icon's
# image inside open(), before its size can be checked. JPEG includes MPO (as many cameras write).
FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP", "PPM")
Image.init()  # registers every plugin, so open(formats=...) finds each of these


class PixelBudget:
    """What decoding may cost one request: at most ``per_image`` pixels in one image and
    ``per_request`` over every image of the request (a batch of b64 instances draws on one
    budget). Each image's size is checked from its header, before a pixel is decoded, so an
    image over the budget costs a header's parse, not a decode. Pixels, not upload bytes: a
    35 KB PNG can hold 16 million pixels."""

    def __init__(self, per_image: int, per_request: int | None = None) -> None:
        self.per_image = per_image
        self.per_request = per_image if per_request is None else per_request
        self.left = self.per_request

    def take(self, width: int, height: int, where: str = "image") -> None:
        pixels = width * height
        if pixels > self.per_image:
            message = f"{where} is {width}x{height}; at most {self.per_image} pixels an image are accepted"
            raise InputError("image_too_large", message)
        if pixels > self.left:
            message = (
                f"{where} is {width}x{height}: the request's images would hold more than "
                f"{self.per_request} pixels in all, the most one request may decode"
            )
            raise InputError("request_too_large", message)
        self.left -= pixels


def decode_image(data: bytes, spec: InputSpec, budget: PixelBudget | int, where: str = "image") -> np.ndarray:
    """Decode one encoded image into an array of ``spec.shape``, scaled as the model expects.
    ``budget``: the request's PixelBudget, or a plain per-image pixel limit."""
    if not isinstance(budget, PixelBudget):
        budget = PixelBudget(budget)
    if not data:
        raise InputError("empty_image", f"{where}: the uploaded image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            budget.take(*img.size, where=where)
            # JPEG can decode at 1/2..1/8 scale for free: never decode more than twice the target.
            img.draft("RGB", (spec.width * 2, spec.height * 2))
            img.load()
            # In place: without an Orientation tag (nearly every upload) nothing is copied.
            ImageOps.exif_transpose(img, in_place=True)
            img = _to_color_mode(img, spec)
            img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError("image_too_large", f"{where}: {exc}") from exc
    except UnidentifiedImageError as exc:
        message = f"{where}: not an image in a format this service reads ({', '.join(FORMATS)})"
        raise InputError("unsupported_media", message) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, MemoryError) as exc:
        raise InputError("corrupt_image", f"{where}: the image could not be decoded: {exc}") from exc
    arr = np.array(img, dtype=np.float32)  # always a new array: scaled in place, no temporaries
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if spec.scale != 1:
        arr *= np.float32(spec.scale)
    if spec.offset != 0:
        arr += np.float32(spec.offset)
    return arr.transpose(2, 0, 1) if spec.layout == "NCHW" else arr


def text_value(value: object, spec: TextSpec, where: str) -> str:
    """One text instance: a string of at most ``max_chars`` characters."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("invalid_text", f"{where}: text must be UTF-8") from exc
    if not isinstance(value, str):
        raise InputError("invalid_dtype", f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > spec.max_chars:
        raise InputError("text_too_long", f"{where}: {len(value)} characters; at most {spec.max_chars} are accepted")
    if not value.isascii():
        try:  # JSON's "\ud800" escapes give lone surrogates, which no model's string tensor takes
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError("invalid_text", f"{where}: text must be valid Unicode (no lone surrogates)") from exc
    return value


def text_batch(values: list, spec: TextSpec, max_instances: int) -> np.ndarray:
    if not values:
        raise InputError("invalid_request", "expected at least one text")
    if len(values) > max_instances:
        raise InputError("batch_too_large", f"at most {max_instances} instances per request, got {len(values)}")
    texts = [text_value(v, spec, f"instance {i}") for i, v in enumerate(values)]
    return np.array(texts, dtype=object)


def _to_color_mode(img: Image.Image, spec: InputSpec) -> Image.Image:
    if getattr(img, "is_animated", False):
        img.seek(0)
    if img.mode in _WIDE_MODES:
        # Scaled to 0..255 by the image's own maximum, read without a copy; the resize runs on
        # 32-bit integers (I;16 cannot be resized), and only the small result becomes floats.
        top = float(img.getextrema()[1]) or 1.0
        if img.mode != "F":
            img = img.convert("I")
        small = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR, reducing_gap=3.0)
        arr = np.asarray(small, dtype=np.float32)
        img = Image.fromarray(np.clip(arr * np.float32(255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*spec.background, 255))
        canvas.alpha_composite(rgba)
        img = canvas
    target = "RGB" if spec.color_mode == "rgb" else "L"
    if img.mode not in (target, "RGB", "L", "1"):
        img = img.convert("RGB")
    return img if img.mode == target else img.convert(target)


def decode_b64_image(value: object, spec: InputSpec, budget: PixelBudget, where: str = "image") -> np.ndarray:
    if not isinstance(value, str):
        raise InputError("invalid_instance", f'{where}: "b64" must hold a base64 string')
    try:
        raw = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InputError("invalid_base64", f"{where}: invalid base64: {exc}") from exc
    return decode_image(raw, spec, budget, where)


def feature_row(value: object, spec: TensorSpec) -> np.ndarray:
    """One instance of a tensor model: its features by name (``{"name": number, ...}``, when the
    release names them) or a nested list of the input's shape."""
    if isinstance(value, dict):
        if not spec.features:
            raise InputError("invalid_instance", "this model's features have no names; send a list of numbers")
        missing = [f for f in spec.features if f not in value]
        unknown = sorted(set(value) - set(spec.features))
        if missing or unknown:
            raise InputError(
                "invalid_features",
                f"expected the features {list(spec.features)}; missing {missing}, unknown {unknown}",
            )
        return _numeric([value[f] for f in spec.features], spec, "features")
    return _numeric(value, spec, "instance")


def tensor_batch(instances: object, spec: Spec, budget: PixelBudget, max_instances: int) -> np.ndarray:
    """Build a batch from TF Serving ``instances``: nested lists, ``{"b64": ...}`` (image models),
    named features (tensor models that name them) or ``{input: ...}``. Every image of the batch
    draws on the one ``budget``."""
    if not isinstance(instances, list) or not instances:
        raise InputError("invalid_request", '"instances" must be a non-empty list')
    if spec.kind == "text":
        # {"<input name>": "text"} is the same as "text": the model has one input.
        values = [next(iter(i.values())) if isinstance(i, dict) and len(i) == 1 else i for i in instances]
        return text_batch(values, spec, max_instances)
    if len(instances) > max_instances:
        raise InputError("batch_too_large", f"at most {max_instances} instances per request, got {len(instances)}")
    rows = []
    for i, item in enumerate(instances):
        if spec.kind == "tensor" and isinstance(item, dict) and spec.features and len(item) > 1:
            rows.append(feature_row(item, spec))
            continue
        # The model has one input, so {"<input name>": value} is the same as value.
        value = next(iter(item.values())) if isinstance(item, dict) and len(item) == 1 and "b64" not in item else item
        if isinstance(value, dict):
            if spec.kind != "image" or set(value) != {"b64"}:
                raise InputError("invalid_instance", f'instance {i}: expected a nested list or {{"b64": "..."}}')
            rows.append(decode_b64_image(value["b64"], spec, budget, f"instance {i}"))
        else:
            rows.append(_numeric(value, spec, f"instance {i}"))
    return np.stack(rows)


def columnar_batch(inputs: object, spec: Spec, budget: PixelBudget, max_instances: int) -> np.ndarray:
    """TF Serving's columnar ``inputs``: a tensor, or ``{input: tensor}``; for tensor models that
    name their features, also ``{feature: [values...], ...}``; for text models a string or a
    list of strings."""
    if spec.kind == "text":
        if isinstance(inputs, dict) and len(inputs) == 1:
            inputs = next(iter(inputs.values()))
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list):
            raise InputError("invalid_inputs", "inputs: expected a string or a list of strings")
        return text_batch(inputs, spec, max_instances)
    if spec.kind == "tensor" and isinstance(inputs, dict) and spec.features and len(inputs) > 1:
        if set(inputs) != set(spec.features):
            raise InputError("invalid_features", f"expected the features {list(spec.features)}")
        columns = [_as_float_array(inputs[f], f"inputs.{f}") for f in spec.features]
        if any(c.ndim != 1 or len(c) != len(columns[0]) for c in columns):
            raise InputError("invalid_shape", "each feature needs a list of one value per instance, all as long")
        inputs = np.stack(columns, axis=1)
    if isinstance(inputs, dict):
        if len(inputs) != 1:
            raise InputError("invalid_inputs", "the model has a single input")
        inputs = next(iter(inputs.values()))
    if spec.kind == "image" and isinstance(inputs, dict) and set(inputs) == {"b64"}:
        return decode_b64_image(inputs["b64"], spec, budget)[None]
    if isinstance(inputs, list) and inputs and all(isinstance(x, dict) for x in inputs):
        return tensor_batch(inputs, spec, budget, max_instances)
    arr = _as_float_array(inputs, "inputs")
    if arr.shape == spec.shape:
        arr = arr[None]
    if arr.ndim != len(spec.shape) + 1 or arr.shape[1:] != spec.shape:
        expected = ", ".join(map(str, spec.shape))
        raise InputError("invalid_shape", f"inputs: expected shape [N, {expected}], got {list(arr.shape)}")
    if arr.shape[0] > max_instances:
        raise InputError("batch_too_large", f"at most {max_instances} instances per request, got {arr.shape[0]}")
    return arr


def _numeric(item: object, spec: Spec, where: str) -> np.ndarray:
    arr = _as_float_array(item, where)
    if arr.shape != spec.shape:
        raise InputError("invalid_shape", f"{where}: expected shape {list(spec.shape)}, got {list(arr.shape)}")
    return arr


def _as_float_array(value: object, where: str) -> np.ndarray:
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise InputError("invalid_dtype", f"{where}: expected numbers, got {type(value).__name__}")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError("invalid_shape", f"{where}: ragged or malformed tensor") from exc
    if raw.dtype.kind not in "iuf":
        raise InputError("invalid_dtype", f"{where}: expected numbers, got {raw.dtype.kind!r} values")
    arr = raw.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError("invalid_value", f"{where}: NaN or infinite values")
    return arr
