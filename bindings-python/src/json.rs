//! JSON values (`payload`, `result`) between Python and `serde_json::Value`.
//!
//! `dict` ↔ object (keys must be `str` and are never renamed), `list`/`tuple` → array (array →
//! `list`), `str`, `int` (64-bit), `float` (finite), `bool` and `None`. Anything else (sets,
//! bytes, arbitrary objects) is a `TypeError`; out-of-range numbers are a `ValueError`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 256;

/// Converts a Python value to JSON; `what` names the argument in error messages.
pub(crate) fn to_value(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    convert(obj, what, 0)
}

fn convert(obj: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{what}: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if obj.is_none() {
        Ok(Value::Null)
    } else if let Ok(s) = obj.cast::<PyString>() {
        Ok(Value::String(s.to_cow()?.into_owned()))
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(PyTypeError::new_err(format!(
                    "{what}: JSON object keys must be str, got {}",
                    type_name(&k)
                )));
            };
            map.insert(key.to_cow()?.into_owned(), convert(&v, what, depth + 1)?);
        }
        Ok(Value::Object(map))
    } else if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(n) = i.extract::<i64>() {
            Ok(Value::Number(n.into()))
        } else if let Ok(n) = i.extract::<u64>() {
            Ok(Value::Number(n.into()))
        } else {
            Err(PyValueError::new_err(format!(
                "{what}: integer {i} does not fit in 64 bits"
            )))
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        let x = f.value();
        Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{what}: {x} is not a valid JSON number")))
    } else if let Ok(list) = obj.cast::<PyList>() {
        list.iter()
            .map(|v| convert(&v, what, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array)
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        tuple
            .iter()
            .map(|v| convert(&v, what, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array)
    } else {
        Err(PyTypeError::new_err(format!(
            "{what}: a value of type {} is not JSON (expected dict, list, tuple, str, int, float, bool or None)",
            type_name(obj)
        )))
    }
}

/// Converts JSON to Python: objects become `dict`, arrays `list`.
pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}
