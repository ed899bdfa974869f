"""Reading images and masks the way real datasets deliver them: grayscale,
RGBA, CMYK, 16-bit, EXIF-rotated. Every failure names the file."""

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CamodetError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".gif")


class DataError(CamodetError, ValueError):
    """A dataset problem; the message names the file and the way out. `reason` is the
    message without the way out, for callers that offer their own (or need none); a
    `skippable` problem's way out is --skip-bad-files."""

    SKIP = "replace it or use --skip-bad-files"

    def __init__(self, reason: str, skippable: bool = False):
        # A DataLoader worker's DataError comes back to the main process re-raised as
        # DataError("Caught DataError in DataLoader worker ...\n<traceback>\n...DataError: <message>");
        # keep the one line that names the file, not the worker's traceback.
        if reason.startswith("Caught DataError") and "DataError: " in reason.rstrip().splitlines()[-1]:
            reason = reason.rstrip().splitlines()[-1].split("DataError: ", 1)[1]
        if reason.endswith(f"; {self.SKIP}"):  # rebuilt from its message (worker re-raise, unpickling)
            reason, skippable = reason[: -len(self.SKIP) - 2], True
        self.reason, self.skippable = reason, skippable
        super().__init__(f"{reason}; {self.SKIP}" if skippable else reason)


def _open(path: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})", skippable=True) from None
    # Phones store the rotation in EXIF; the dataset's annotation follows the displayed image.
    return ImageOps.exif_transpose(img)


def as_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit levels from bool, 16-bit, or float (0..1 or 0..255) pixel arrays."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    is_float = arr.dtype.kind == "f"  # before the cast below, which makes every array float
    arr = arr.astype(np.float32)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    if is_float and arr.max(initial=0) <= 1.0:
        top = 1.0
    return np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)


def _read_cached(path: str, ndim: int) -> np.ndarray:
    try:
        arr = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path}: unreadable cache file ({e}); delete the cache folder to rebuild it"
        ) from None
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise DataError(f"{path}: not a camodet cache file; delete the cache folder to rebuild it")
    return arr


def read_image(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    if path.endswith(".npy"):
        return _read_cached(path, 3)
    return rgb_of(_open(path))


# Modes whose levels do not fit 8 bits: scaled by as_uint8 (PIL's convert would clip them).
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def rgb_of(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB of a decoded image (any mode, already upright): the one conversion that a
    file, a PIL image and an array all go through, so that each gives the same pixels."""
    if img.mode in HIGH_DEPTH_MODES:
        return rgb_of_array(np.asarray(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black rather than dropping alpha blindly: transparent pixels carry no scene.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"))


def rgb_of_array(arr) -> np.ndarray:
    """HxWx3 uint8 RGB of an HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) array of any depth:
    levels as as_uint8 reads them, alpha composited on black as rgb_of does."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {arr.shape}")
    arr = as_uint8(arr)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:
        return rgb_of(Image.fromarray(np.ascontiguousarray(arr)))  # HxWx4 uint8 is RGBA
    return np.ascontiguousarray(arr)


def read_mask(path: str) -> np.ndarray:
    """HxW uint8 grey levels (GT is value > 127), whatever way the file stores the mask."""
    return decode_mask(path)[0]


def read_grey(path: str) -> np.ndarray:
    """HxW uint8 grey levels as stored, for probability maps (a faint map of 0s and 1s is not a
    label image, so none of read_mask's label handling)."""
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "1"):
        return as_uint8(np.asarray(img))
    return np.asarray(img.convert("L"))


# Colour masks whose channels differ by at most this are grey (JPEG noise on a grey mask).
GREY_SPREAD = 24


def decode_mask(path: str) -> tuple[np.ndarray, str | None]:
    """(HxW uint8 mask with the object > 127, how the file stored it when that was not plain
    0..255 grey: None for plain grey). Read where the meaning is unambiguous: grey labels 0/k
    with k <= 127 (0/1 masks), palette or RGB label images of black plus one colour, an object
    held only in the alpha channel. Anything else that is not grey is refused, naming the file."""
    if path.endswith(".npy"):
        return _read_cached(path, 2), None
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "1"):
        return _grey_labels(as_uint8(np.asarray(img)), None)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        kind = "palette labels"
    else:
        kind = None
    alpha = None
    if img.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(img.getchannel("A"))
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    if img.mode == "L":
        colour = np.asarray(img)
    else:
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        spread = int(np.abs(rgb - rgb[:, :, :1]).max(initial=0))
        colour = np.asarray(img.convert("L")) if spread <= GREY_SPREAD else None
        if colour is None:
            colour, kind = _two_colour_labels(path, rgb), kind or "RGB labels"
    if alpha is not None and alpha.min() != alpha.max():  # a constant alpha carries nothing
        if colour.min() == colour.max():
            return alpha.copy(), "alpha channel (object = opaque)"
        if not np.array_equal(colour > 127, alpha > 127):
            raise DataError(
                f"{path}: mask has an alpha channel and colours that disagree on the object; "
                f"save it as 8-bit grey, object = 255",
                skippable=True,
            )
    return _grey_labels(colour, kind)


def _grey_labels(grey: np.ndarray, kind: str | None) -> tuple[np.ndarray, str | None]:
    """Grey levels 0 and one k <= 127 (0/1 labels, a label index) mark the object with k:
    under GT = value > 127 they would all read as background."""
    top = int(grey.max(initial=0))
    if top == 0 or top > 127 or np.count_nonzero((grey != 0) & (grey != top)):
        return grey, kind
    return np.where(grey == top, 255, 0).astype(np.uint8), kind or f"0/{top} labels (object = {top})"


def _two_colour_labels(path: str, rgb: np.ndarray) -> np.ndarray:
    """Black plus one colour -> 0/255; more colours than that have no single meaning."""
    flat = rgb.reshape(-1, 3)
    colours = np.unique(flat[np.any(flat != 0, axis=1)], axis=0)
    if len(colours) > 1:
        raise DataError(
            f"{path}: mask has {len(colours) + 1} colours (a multi-class label image?); "
            f"save it as 8-bit grey, object = 255, background = 0",
            skippable=True,
        )
    return np.where(np.any(rgb != 0, axis=2), 255, 0).astype(np.uint8)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as displayed, read from the header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})", skippable=True) from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
