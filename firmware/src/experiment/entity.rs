//! A request's entity id, from where the experiment says: a header, a key of an OIP v2
//! request's `parameters`, or a named feature of a `/predict` body (or of the first
//! instance of a KServe V1 body of named features). Pure: the caller hands over the
//! header lookup and the body's JSON.
//!
//! A string is taken as it is, a number as JSON writes it (`42`, `4.5`); anything else,
//! an empty string or a missing key is no entity id (the request goes to the default
//! variant).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::EntitySource;

/// The entity id of a request: `header` looks a header up by its lower-case name,
/// `json` is the body's JSON part (the whole body, or the JSON header of a body in
/// the binary tensor data extension).
pub fn entity_id(
    source: &EntitySource,
    header: impl Fn(&str) -> Option<String>,
    json: &[u8],
) -> Option<String> {
    let id = match source {
        EntitySource::Header(name) => header(name),
        EntitySource::Parameter(key) => {
            #[derive(Deserialize)]
            struct Body {
                #[serde(default)]
                parameters: Option<Map<String, Value>>,
            }
            let body: Body = serde_json::from_slice(json).ok()?;
            text(body.parameters?.get(key)?)
        }
        EntitySource::Feature(name) => {
            #[derive(Deserialize)]
            struct Body {
                #[serde(default)]
                features: Option<Map<String, Value>>,
                #[serde(default)]
                instances: Option<Vec<Value>>,
            }
            let body: Body = serde_json::from_slice(json).ok()?;
            match (body.features, body.instances) {
                (Some(features), _) => text(features.get(name)?),
                (None, Some(instances)) => text(instances.first()?.get(name)?),
                (None, None) => None,
            }
        }
    };
    id.filter(|id| !id.is_empty())
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_header(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_id_comes_from_the_header_the_parameters_or_a_feature() {
        let header = |name: &str| (name == "x-perch-entity-id").then(|| "cust-7".to_string());
        assert_eq!(
            entity_id(&EntitySource::default(), header, b"").as_deref(),
            Some("cust-7")
        );
        let oip = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],
                       "parameters":{"entity_id":"cust-8","binary_data_output":false}}"#;
        let parameter = EntitySource::Parameter("entity_id".into());
        assert_eq!(
            entity_id(&parameter, no_header, oip).as_deref(),
            Some("cust-8")
        );
        let feature = EntitySource::Feature("customer".into());
        let predict = br#"{"features":{"customer":1234,"petal_length":1.4}}"#;
        assert_eq!(
            entity_id(&feature, no_header, predict).as_deref(),
            Some("1234")
        );
        let v1 = br#"{"instances":[{"customer":"c-9"},{"customer":"c-10"}]}"#;
        assert_eq!(entity_id(&feature, no_header, v1).as_deref(), Some("c-9"));
    }

    #[test]
    fn a_missing_empty_or_odd_id_is_none() {
        let parameter = EntitySource::Parameter("entity_id".into());
        let feature = EntitySource::Feature("customer".into());
        for body in [
            &b"not json"[..],
            br#"{"inputs":[]}"#,
            br#"{"parameters":{"entity_id":""}}"#,
            br#"{"parameters":{"entity_id":{"nested":1}}}"#,
            br#"{"parameters":[1,2]}"#,
        ] {
            assert_eq!(entity_id(&parameter, no_header, body), None);
        }
        for body in [
            &br#"{"features":{"other":1}}"#[..],
            br#"{"instances":[]}"#,
            br#"{}"#,
        ] {
            assert_eq!(entity_id(&feature, no_header, body), None);
        }
        assert_eq!(entity_id(&EntitySource::default(), no_header, b"{}"), None);
    }
}
