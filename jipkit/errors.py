"""JIP's exceptions: one root, specific leaves.

::

    JipError
    ├── ConfigError                    a site configuration file or JIP_* variable is invalid
    ├── QueryError                     a query cannot be run as written
    │   └── UnknownKeywordError        (also KeyError) a key is not a DICOM keyword, or not indexed
    ├── NotFoundError                  (also LookupError) no such patient, study, series or instance
    ├── DicomFileError                 a file is not readable DICOM (corrupt, truncated, not DICOM)
    ├── VolumeError                    a series cannot be assembled into one volume
    │   ├── NoPixelDataError           the series holds no images
    │   ├── MixedSeriesError           orientations, sizes or pixel formats differ between images
    │   └── AmbiguousSeriesError       several images at one position (echoes, phases): choose one
    ├── PACSError                      talking to a PACS failed
    │   ├── PACSUnavailableError       (also ConnectionError) it is down or unreachable
    │   ├── PACSTimeoutError           (also TimeoutError) it did not answer in time
    │   ├── PACSAuthError              (also PermissionError) it refused our credentials
    │   └── PACSProtocolError          it answered, but not as the standard says
    ├── CacheError                     the local cache of retrieved series cannot be used
    └── FederationError                the federation (coordinator, runner) refused or failed
        ├── NotebookError              a notebook is malformed (no parameters cell, bad JSON)
        │   └── ParameterError         run parameters do not fit the notebook's parameter schema
        ├── SignatureError             a signature is missing, wrong, or by an unknown key
        └── CoordinatorError           the coordinator answered with an error

Every message says what was expected, what was found, and what to do.  Each class
carries a fixed ``reason`` code: the only thing about a failure that may leave a
site (a message can hold a path, and a path can hold a patient's name).
"""

from __future__ import annotations

__all__ = [
    "AmbiguousSeriesError",
    "CacheError",
    "ConfigError",
    "CoordinatorError",
    "DicomFileError",
    "FederationError",
    "JipError",
    "MixedSeriesError",
    "NoPixelDataError",
    "NotFoundError",
    "NotebookError",
    "PACSAuthError",
    "PACSError",
    "PACSProtocolError",
    "PACSTimeoutError",
    "PACSUnavailableError",
    "ParameterError",
    "QueryError",
    "SignatureError",
    "UnknownKeywordError",
    "VolumeError",
]


class JipError(Exception):
    """Root of every error JIP raises on purpose.

    Attributes
    ----------
    reason : str
        A fixed, machine-readable code for the kind of failure.  Safe to send
        across a site's boundary; the message is not.
    """

    reason = "jip_error"

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0]) if self.args else self.reason


class ConfigError(JipError):
    """A site configuration file or a ``JIP_*`` environment variable is invalid."""

    reason = "config_invalid"


class QueryError(JipError):
    """A query cannot be run as written (bad value, bad range, unsupported key)."""

    reason = "query_invalid"


class UnknownKeywordError(QueryError, KeyError):
    """A query key is not a DICOM keyword, or is one the index does not hold."""

    reason = "query_unknown_keyword"


class NotFoundError(JipError, LookupError):
    """No patient, study, series or instance matches."""

    reason = "not_found"


class DicomFileError(JipError):
    """A file cannot be read as DICOM: corrupt, truncated or not DICOM at all."""

    reason = "dicom_file_invalid"


class VolumeError(JipError):
    """A series cannot be assembled into one volume."""

    reason = "volume_invalid"


class NoPixelDataError(VolumeError):
    """The series holds no images (reports, structured reports, presentation states)."""

    reason = "volume_no_pixel_data"


class MixedSeriesError(VolumeError):
    """Images of one series differ in orientation, size or pixel format."""

    reason = "volume_mixed"


class AmbiguousSeriesError(VolumeError):
    """Several images lie at one position (echoes, phases, b-values).

    Attributes
    ----------
    attribute : str or None
        The DICOM keyword whose values tell the images apart, when one does.
    values : list
        Its distinct values.
    """

    reason = "volume_ambiguous"

    def __init__(self, message: str, attribute: str | None = None, values: list[object] | None = None):
        super().__init__(message)
        self.attribute = attribute
        self.values = values or []


class PACSError(JipError):
    """Talking to a PACS failed."""

    reason = "pacs_error"


class PACSUnavailableError(PACSError, ConnectionError):
    """The PACS is down or cannot be reached."""

    reason = "pacs_unavailable"


class PACSTimeoutError(PACSError, TimeoutError):
    """The PACS did not answer in time."""

    reason = "pacs_timeout"


class PACSAuthError(PACSError, PermissionError):
    """The PACS refused our credentials or our AE title."""

    reason = "pacs_auth"


class PACSProtocolError(PACSError):
    """The PACS answered, but not in a way the standard allows."""

    reason = "pacs_protocol"


class CacheError(JipError):
    """The local cache of retrieved series cannot be used."""

    reason = "cache_error"


class FederationError(JipError):
    """The federation (coordinator or runner) refused a request or failed."""

    reason = "federation_error"


class NotebookError(FederationError):
    """A notebook is malformed: not nbformat 4, no parameters cell, unparsable parameters."""

    reason = "notebook_invalid"


class ParameterError(NotebookError):
    """Run parameters do not fit the approved notebook's parameter schema."""

    reason = "parameters_invalid"


class SignatureError(FederationError):
    """A signature is missing or wrong, or made by a key that is not trusted."""

    reason = "signature_invalid"


class CoordinatorError(FederationError):
    """The coordinator answered with an error.

    Attributes
    ----------
    status : int
        The HTTP status code (0 when there was no answer).
    """

    reason = "coordinator_error"

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, JipError):
        _cls.__module__ = "jipkit"
