//! The JSONPath subset SageMaker's batch transform documents for
//! `DataProcessing.InputFilter` / `OutputFilter`: `$`, `.name`, `['a','b']`,
//! `[i]` (negative from the end), `[i,j,…]`, `[start:end]` (either side may
//! be left out; end exclusive) and `*`, chained (`$.features[1:]`).
//!
//! A single name or index selects a value; a list, a slice or `*` selects an
//! array of values (names: an object of them, in the order listed), which is
//! what SageMaker writes for `$[0,-1]` on a CSV row or `$['id',
//! 'SageMakerOutput']` on a JSON record. An index outside the record, or a
//! name it lacks, is an error, as in SageMaker.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
enum Sel {
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Name(String),
    All,
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Vec<Sel>>,
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let err = |at: usize, what: &str| {
            format!("JSONPath {text:?}: {what} at character {}; the forms SageMaker documents are $, $.name, $['a','b'], $[0], $[0,-1], $[1:], $[2:5], $.features[1:] and *", at + 1)
        };
        let b = text.as_bytes();
        if b.first() != Some(&b'$') {
            return Err(err(0, "it must start with `$`"));
        }
        let mut i = 1;
        let mut segments = Vec::new();
        while i < b.len() {
            match b[i] {
                b'.' => {
                    i += 1;
                    let start = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-' || b[i] == b'*')
                    {
                        i += 1;
                    }
                    match &text[start..i] {
                        "" => return Err(err(start, "a name is missing after `.`")),
                        "*" => segments.push(vec![Sel::All]),
                        name if name.contains('*') => {
                            return Err(err(start, "`*` is a whole selector, not part of a name"))
                        }
                        name => segments.push(vec![Sel::Name(name.to_string())]),
                    }
                }
                b'[' => {
                    i += 1;
                    let mut sels = Vec::new();
                    loop {
                        while i < b.len() && b[i] == b' ' {
                            i += 1;
                        }
                        let Some(&c) = b.get(i) else { return Err(err(i, "`]` is missing")) };
                        if c == b'\'' || c == b'"' {
                            let start = i + 1;
                            let Some(len) = text[start..].find(c as char) else {
                                return Err(err(i, "a quoted name is not closed"));
                            };
                            sels.push(Sel::Name(text[start..start + len].to_string()));
                            i = start + len + 1;
                        } else if c == b'*' {
                            sels.push(Sel::All);
                            i += 1;
                        } else {
                            let start = i;
                            while i < b.len() && (b[i] == b'-' || b[i] == b':' || b[i].is_ascii_digit()) {
                                i += 1;
                            }
                            let part = &text[start..i];
                            let num = |s: &str| -> Result<Option<i64>, String> {
                                if s.is_empty() {
                                    return Ok(None);
                                }
                                s.parse::<i64>().map(Some).map_err(|_| err(start, &format!("`{s}` is not an index")))
                            };
                            match part.split_once(':') {
                                Some((a, z)) if !z.contains(':') => sels.push(Sel::Slice(num(a)?, num(z)?)),
                                Some(_) => return Err(err(start, "slice steps are not supported")),
                                None => match num(part)? {
                                    Some(n) => sels.push(Sel::Index(n)),
                                    None => return Err(err(start, "an index, a slice or a quoted name is expected")),
                                },
                            }
                        }
                        while i < b.len() && b[i] == b' ' {
                            i += 1;
                        }
                        match b.get(i) {
                            Some(b',') => i += 1,
                            Some(b']') => {
                                i += 1;
                                break;
                            }
                            _ => return Err(err(i, "`,` or `]` is expected")),
                        }
                    }
                    segments.push(sels);
                }
                _ => return Err(err(i, "`.` or `[` is expected")),
            }
        }
        Ok(JsonPath { text: text.to_string(), segments })
    }

    /// For a record that is an array of `len` fields (a CSV row): the
    /// indices the path selects, in order, and whether it selects one value
    /// (not an array). Only index selectors apply to a CSV row.
    pub fn select_fields(&self, len: usize) -> Result<(Vec<usize>, bool), String> {
        match self.segments.as_slice() {
            [] => Ok(((0..len).collect(), false)),
            [sels] => {
                let single = matches!(sels.as_slice(), [Sel::Index(_)]);
                Ok((indices(sels, len, &self.text)?, single))
            }
            _ => Err(format!(
                "JSONPath {}: a CSV record is one array of fields; use one selector such as $[1:] or $[0,-1]",
                self.text
            )),
        }
    }

    /// Applies the path to a JSON record.
    pub fn apply(&self, v: &Value) -> Result<Value, String> {
        let mut cur = v.clone();
        for sels in &self.segments {
            cur = step(&cur, sels, &self.text)?;
        }
        Ok(cur)
    }
}

fn resolve(i: i64, len: usize, path: &str) -> Result<usize, String> {
    let n = len as i64;
    let j = if i < 0 { n + i } else { i };
    if (0..n).contains(&j) {
        Ok(j as usize)
    } else {
        Err(format!("JSONPath {path}: index {i} is outside the record, which has {len} fields"))
    }
}

fn indices(sels: &[Sel], len: usize, path: &str) -> Result<Vec<usize>, String> {
    let n = len as i64;
    let clamp = |x: i64| (if x < 0 { n + x } else { x }).clamp(0, n) as usize;
    let mut out = Vec::new();
    for s in sels {
        match s {
            Sel::Index(i) => out.push(resolve(*i, len, path)?),
            Sel::Slice(a, z) => {
                let (a, z) = (a.map(clamp).unwrap_or(0), z.map(clamp).unwrap_or(len));
                out.extend(a..z.max(a));
            }
            Sel::All => out.extend(0..len),
            Sel::Name(name) => {
                return Err(format!(
                    "JSONPath {path}: `{name}` names a field, but this record is an array; use indices"
                ))
            }
        }
    }
    Ok(out)
}

fn step(v: &Value, sels: &[Sel], path: &str) -> Result<Value, String> {
    match (v, sels) {
        (Value::Object(o), [Sel::Name(name)]) => {
            o.get(name).cloned().ok_or_else(|| format!("JSONPath {path}: the record has no `{name}`"))
        }
        (Value::Object(o), [Sel::All]) => Ok(Value::Array(o.values().cloned().collect())),
        (Value::Object(o), sels) => {
            let mut picked = Map::new();
            for s in sels {
                let Sel::Name(name) = s else {
                    return Err(format!("JSONPath {path}: the record is an object; select its fields by name"));
                };
                let x = o.get(name).ok_or_else(|| format!("JSONPath {path}: the record has no `{name}`"))?;
                picked.insert(name.clone(), x.clone());
            }
            Ok(Value::Object(picked))
        }
        (Value::Array(a), [Sel::Index(i)]) => Ok(a[resolve(*i, a.len(), path)?].clone()),
        (Value::Array(a), sels) => {
            Ok(Value::Array(indices(sels, a.len(), path)?.into_iter().map(|i| a[i].clone()).collect()))
        }
        (other, _) => Err(format!(
            "JSONPath {path}: cannot select inside {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "a string",
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn csv_rows_select_by_index() {
        assert_eq!(p("$").select_fields(3).unwrap(), (vec![0, 1, 2], false));
        assert_eq!(p("$[1:]").select_fields(4).unwrap(), (vec![1, 2, 3], false));
        assert_eq!(p("$[0,-1]").select_fields(4).unwrap(), (vec![0, 3], false));
        assert_eq!(p("$[0,5:]").select_fields(7).unwrap(), (vec![0, 5, 6], false));
        assert_eq!(p("$[2:5]").select_fields(4).unwrap(), (vec![2, 3], false));
        assert_eq!(p("$[-2:]").select_fields(4).unwrap(), (vec![2, 3], false));
        assert_eq!(p("$[1]").select_fields(4).unwrap(), (vec![1], true));
        assert_eq!(p("$[*]").select_fields(2).unwrap(), (vec![0, 1], false));
        let e = p("$[4]").select_fields(4).unwrap_err();
        assert!(e.contains("index 4 is outside the record, which has 4 fields"), "{e}");
        let e = p("$.id").select_fields(4).unwrap_err();
        assert!(e.contains("array") && e.contains("indices"), "{e}");
    }

    #[test]
    fn json_records_select_by_name_and_index() {
        let r = json!({"id": 7, "features": [1.0, 2.0, 3.0], "SageMakerOutput": {"p": [0.1]}});
        assert_eq!(p("$.features").apply(&r).unwrap(), json!([1.0, 2.0, 3.0]));
        assert_eq!(p("$.features[1:]").apply(&r).unwrap(), json!([2.0, 3.0]));
        assert_eq!(p("$['features'][-1]").apply(&r).unwrap(), json!(3.0));
        assert_eq!(
            p("$['id','SageMakerOutput']").apply(&r).unwrap(),
            json!({"id": 7, "SageMakerOutput": {"p": [0.1]}})
        );
        assert_eq!(p("$.SageMakerOutput.p").apply(&r).unwrap(), json!([0.1]));
        assert_eq!(p("$").apply(&r).unwrap(), r);
        assert!(p("$.label").apply(&r).unwrap_err().contains("has no `label`"));
        assert!(p("$.id.x").apply(&r).unwrap_err().contains("inside a number"));
    }

    #[test]
    fn malformed_paths_are_named() {
        for (bad, why) in [
            ("features", "start with `$`"),
            ("$.", "name is missing"),
            ("$[1", "`,` or `]` is expected"),
            ("$[", "`]` is missing"),
            ("$['id", "not closed"),
            ("$[1:2:3]", "steps"),
            ("$[x]", "an index, a slice or a quoted name"),
            ("$x", "`.` or `[` is expected"),
            ("$[99999999999999999999]", "is not an index"),
        ] {
            let e = JsonPath::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
