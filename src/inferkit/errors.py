"""The inferkit exception tree.

Every error inferkit raises derives from :class:`InferkitError` and also from the builtin
exception a caller would naturally catch, so ``except FileNotFoundError`` keeps working::

    InferkitError (Exception)
    ├── ModelNotFoundError      (+ FileNotFoundError)  no such file, folder or cached repo
    │   └── OfflineError        (+ ConnectionError)    needs a download, but we are offline
    ├── UnsupportedModelError   (+ ValueError)         exists, but is not a model we run
    │   └── IntegrityError                             a cached file's bytes fail its hash
    ├── LoraError               (+ ValueError)         a LoRA file does not fit this model
    ├── InvalidParameterError   (+ ValueError)         an argument is out of range
    │   └── UnknownSchedulerError (+ KeyError)         no sampler has this name
    ├── MissingExtraError       (+ ModuleNotFoundError) an optional extra is not installed
    ├── DeviceUnavailableError  (+ RuntimeError)       device or dtype unusable here
    ├── DeviceOutOfMemoryError  (+ MemoryError)        out of memory after every fallback
    ├── NumericalError          (+ ArithmeticError)    the latents became NaN or infinite
    ├── ModelClosedError        (+ RuntimeError)       ``infer`` after ``Model.close()``
    └── InferenceCancelled      (+ RuntimeError)       a step callback asked to stop

Each error's message names the file or argument and says what to do about it. Errors raised
because of another exception keep it as ``__cause__``.

Example:
    >>> import inferkit
    >>> try:
    ...     inferkit.GenerationParams("a cat", steps=0)
    ... except inferkit.InvalidParameterError as e:
    ...     print(e.name, e.value)
    steps 0

"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DeviceOutOfMemoryError",
    "DeviceUnavailableError",
    "InferenceCancelled",
    "InferkitError",
    "IntegrityError",
    "InvalidParameterError",
    "LoraError",
    "MissingExtraError",
    "ModelClosedError",
    "ModelNotFoundError",
    "NumericalError",
    "OfflineError",
    "UnknownSchedulerError",
    "UnsupportedModelError",
]


class InferkitError(Exception):
    """Base class of every error inferkit raises.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.ModelNotFoundError, inferkit.InferkitError)
        True

    """


class ModelNotFoundError(InferkitError, FileNotFoundError):
    """A model source does not exist: no such file or folder, and no such repo in the hub cache.

    Attributes:
        source: the path or repo id that was asked for.

    Example:
        >>> import inferkit
        >>> try:
        ...     inferkit.Model.load("./no-such-model")
        ... except FileNotFoundError as e:
        ...     print(type(e).__name__)
        ModelNotFoundError

    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source

    def __str__(self) -> str:
        return str(self.args[0])


class OfflineError(ModelNotFoundError, ConnectionError):
    """The model is not available locally and downloading is disabled or impossible.

    Raised instead of trying the network when ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.OfflineError, ConnectionError)
        True

    """


class UnsupportedModelError(InferkitError, ValueError):
    """The source exists but is not a model inferkit can run (unknown layout or pipeline class).

    Attributes:
        source: the path or repo id.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.UnsupportedModelError, ValueError)
        True

    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class LoraError(InferkitError, ValueError):
    """A LoRA file cannot be applied to this model.

    It matches none of the model's layers (a LoRA for another family, or not a LoRA), fits them
    with the wrong shapes, is incomplete, or is of a kind inferkit cannot merge (DoRA).

    Attributes:
        path: the LoRA file.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.LoraError, ValueError)
        True

    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class MissingExtraError(InferkitError, ModuleNotFoundError):
    """An optional dependency of a feature is not installed; the message names the extra.

    ``inferkit.batch`` needs ``inferkit[batch]`` (pyarrow, fsspec); ``inferkit.ray`` needs
    ``inferkit[ray]``.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.MissingExtraError, ImportError)
        True

    """


class IntegrityError(UnsupportedModelError):
    """A cached file's content does not match the hash its cache entry is named by.

    Attributes:
        source: the model's path or repo id.
        path: the damaged file.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.IntegrityError, inferkit.UnsupportedModelError)
        True

    """

    def __init__(self, message: str, *, source: str, path: str) -> None:
        super().__init__(message, source=source)
        self.path = path


class InvalidParameterError(InferkitError, ValueError):
    """A generation or load argument has a value that is not allowed.

    Attributes:
        name: the parameter's name, as the user spells it (``"steps"``, ``"width"``).
        value: the value that was refused.
        allowed: a short description of what is allowed.

    Example:
        >>> import inferkit
        >>> try:
        ...     inferkit.GenerationParams("a cat", guidance=-1.0)
        ... except ValueError as e:
        ...     print(e)
        guidance=-1.0 is not allowed: must be a finite number >= 0

    """

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        super().__init__(f"{name}={value!r} is not allowed: {allowed}")
        self.name = name
        self.value = value
        self.allowed = allowed


class UnknownSchedulerError(InvalidParameterError, KeyError):
    """A scheduler name matches no registered sampler; the message suggests close matches.

    Attributes:
        suggestions: registered names close to the one given.

    Example:
        >>> import inferkit
        >>> try:
        ...     inferkit.GenerationParams("a cat", scheduler="eulr a")
        ... except inferkit.UnknownSchedulerError as e:
        ...     print(e.suggestions[0])
        euler_a

    """

    def __init__(self, value: str, suggestions: tuple[str, ...]) -> None:
        hint = f"did you mean {', '.join(repr(s) for s in suggestions)}? " if suggestions else ""
        super().__init__(
            "scheduler",
            value,
            f"{hint}run `inferkit schedulers` to list every sampler",
        )
        self.suggestions = suggestions

    def __str__(self) -> str:
        return str(self.args[0])


class DeviceUnavailableError(InferkitError, RuntimeError):
    """The requested device or dtype is not usable on this machine.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.DeviceUnavailableError, RuntimeError)
        True

    """


class DeviceOutOfMemoryError(InferkitError, MemoryError):
    """The device ran out of memory, and the policy had no fallback left to try.

    Attributes:
        tried: the memory strategies tried before giving up.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.DeviceOutOfMemoryError, MemoryError)
        True

    """

    def __init__(self, message: str, *, tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tried = tried


class NumericalError(InferkitError, ArithmeticError):
    """The denoising produced NaN or infinite latents, so no image would be meaningful.

    Attributes:
        step: the first step (1-based) after which the latents were not finite.
        dtype: the dtype the model ran in.
        seeds: the seeds of the images denoised together when it happened.

    Example:
        >>> import inferkit
        >>> str(inferkit.NumericalError(step=3, dtype="float16"))[:46]
        'the latents became NaN or infinite at step 3 i'

    """

    def __init__(self, step: int, dtype: str, seeds: tuple[int, ...] = ()) -> None:
        hint = (
            "load the model with dtype='bfloat16' (same range as float32) or 'float32'"
            if dtype == "float16"
            else "load the model with dtype='float32', or check the weights (strict loading, "
            "a matching VAE)"
        )
        which = f" (seed {', '.join(map(str, seeds))})" if seeds else ""
        super().__init__(
            f"the latents became NaN or infinite at step {step}{which} in {dtype}; no image is "
            f"returned. To fix it, {hint}"
        )
        self.step = step
        self.dtype = dtype
        self.seeds = seeds


class ModelClosedError(InferkitError, RuntimeError):
    """The model was closed with :meth:`Model.close` and cannot run any more.

    Example:
        >>> import inferkit
        >>> issubclass(inferkit.ModelClosedError, RuntimeError)
        True

    """


class InferenceCancelled(InferkitError, RuntimeError):
    """A step callback returned ``False`` (or raised this), so generation stopped early.

    Attributes:
        step: the number of denoising steps completed before stopping.
        total: the number of steps the run would have taken.

    Example:
        >>> import inferkit
        >>> e = inferkit.InferenceCancelled(step=3, total=20)
        >>> str(e)
        'generation cancelled by the step callback after 3 of 20 steps'

    """

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"generation cancelled by the step callback after {step} of {total} steps")
        self.step = step
        self.total = total


def first_line(error: BaseException) -> str:
    r"""Return the first line of ``error``'s message, or its type's name if it has none.

    For quoting a lower library's error inside an inferkit message.

    Example:
        >>> first_line(RuntimeError("out of memory\ntried to allocate 2 GiB"))
        'out of memory'
        >>> first_line(KeyError())
        'KeyError'

    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
