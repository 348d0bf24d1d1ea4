//! Core errors as JavaScript errors: an `Error` whose `code` is the core's stable code
//! (`"TaskNotFound"`, ...; `tests/fixtures/v1/errors.json`), thrown by synchronous calls and
//! rejecting the promise of asynchronous ones.
//!
//! napi-rs would reject a failed `async fn` with its own `Status` as the code, so promises are
//! settled by [`crate::runtime`], which builds the JS `Error` on the JS thread from a
//! [`Failure`].

use a3s_code_core as core;

/// A stable error code (`Error::code()`), used as a JS error's `code`.
pub struct Code(pub &'static str);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.0
    }
}

/// The result of a synchronous binding call: a core error is thrown with its code.
pub type Result<T> = std::result::Result<T, napi::Error<Code>>;

/// A core error as a napi error carrying the core's code.
pub fn coded(err: core::Error) -> napi::Error<Code> {
    napi::Error::new(Code(err.code()), err.to_string())
}

/// A core error reduced to what JavaScript sees: its code and message (cloneable, so an
/// outcome can be replayed).
#[derive(Debug, Clone)]
pub struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    /// The napi error carrying the code.
    pub fn into_error(self) -> napi::Error<Code> {
        napi::Error::new(Code(self.code), self.message)
    }
}

impl From<core::Error> for Failure {
    fn from(err: core::Error) -> Self {
        Self {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

/// A non-negative integer argument, or an `InvalidConfig` error naming it.
pub fn non_negative(name: &str, value: i64) -> core::Result<u64> {
    u64::try_from(value).map_err(|_| core::Error::InvalidConfig {
        reason: format!("{name} must be a non-negative integer, got {value}"),
    })
}

/// A non-negative count argument (`usize`), or an `InvalidConfig` error naming it.
pub fn count(name: &str, value: i64) -> core::Result<usize> {
    non_negative(name, value).map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// A count or millisecond value as a JS number (exact below 2^53).
pub fn number(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Every stable error code an `Error` thrown or rejected by this package can carry in its
/// `code` (the core's `Error::CODES`), besides napi's own argument-conversion codes
/// (`InvalidArg`, `StringExpected`, ...).
#[napi_derive::napi]
pub fn error_codes() -> Vec<&'static str> {
    core::Error::CODES.to_vec()
}
