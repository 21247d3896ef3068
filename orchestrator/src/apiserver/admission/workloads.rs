//! Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs and CronJobs.

use serde_json::{json, Value};

use super::pod::{default_template, validate_template};
use super::{default_field, immutable, non_negative, obj_mut, str_at};
use crate::apiserver::error::Cause;
use crate::apiserver::selectors::label_selector_matches;

/// A selector is required, non-empty, and must select its own template.
fn validate_selector(obj: &Value, template: &str, tpath: &str, out: &mut Vec<Cause>) {
    let Some(sel) = obj.pointer("/spec/selector").filter(|s| !s.is_null()) else {
        out.push(Cause::required("spec.selector"));
        return;
    };
    let empty = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.is_empty())
        && sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .is_none_or(|m| m.is_empty());
    if empty {
        out.push(Cause::invalid(
            "spec.selector",
            "{}",
            "empty selector is invalid for deployment",
        ));
        return;
    }
    let labels = obj
        .pointer(&format!("{template}/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match label_selector_matches(sel, &labels) {
        Ok(true) => {}
        Ok(false) => out.push(Cause::invalid(
            format!("{tpath}.metadata.labels"),
            Value::Object(labels),
            "`selector` does not match template `labels`",
        )),
        Err(why) => out.push(Cause::invalid("spec.selector", sel, why)),
    }
}

fn replicas_and_template(obj: &Value, out: &mut Vec<Cause>) {
    non_negative(obj, "/spec/replicas", "spec.replicas", out);
    validate_selector(obj, "/spec/template", "spec.template", out);
    validate_template(obj, "/spec/template", "spec.template", out);
    non_negative(obj, "/spec/minReadySeconds", "spec.minReadySeconds", out);
    non_negative(
        obj,
        "/spec/revisionHistoryLimit",
        "spec.revisionHistoryLimit",
        out,
    );
    if let Some(p) = str_at(obj, "/spec/template/spec/restartPolicy") {
        if p != "Always" {
            out.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                p,
                &["Always"],
            ));
        }
    }
}

fn selector_immutable(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    immutable(new, old, "/spec/selector", "spec.selector", &mut out);
    out
}

/// An int or a percentage, as `maxSurge`/`maxUnavailable` take; the value
/// it scales to against 100 (so "0%" and 0 are both zero).
fn int_or_percent(v: &Value, field: &str, out: &mut Vec<Cause>) -> Option<i64> {
    match v {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                out.push(Cause::invalid(
                    field,
                    n,
                    "must be greater than or equal to 0",
                ));
            }
            Some(n)
        }
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if (0..=100).contains(&p) => Some(p),
            Some(p) => {
                out.push(Cause::invalid(field, s, "must not be greater than 100%"));
                Some(p)
            }
            None => {
                out.push(Cause::invalid(field, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
        _ => None,
    }
}

pub fn default_deployment(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "replicas", json!(1));
    default_field(spec, "revisionHistoryLimit", json!(10));
    default_field(spec, "progressDeadlineSeconds", json!(600));
    default_field(spec, "strategy", json!({"type": "RollingUpdate"}));
    if let Some(Value::Object(st)) = spec.get_mut("strategy") {
        default_field(st, "type", json!("RollingUpdate"));
        if st.get("type") == Some(&json!("RollingUpdate")) {
            default_field(st, "rollingUpdate", json!({}));
            if let Some(Value::Object(ru)) = st.get_mut("rollingUpdate") {
                default_field(ru, "maxSurge", json!("25%"));
                default_field(ru, "maxUnavailable", json!("25%"));
            }
        }
    }
    default_template(obj, "/spec/template");
}

pub fn validate_deployment(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    replicas_and_template(obj, &mut out);
    non_negative(
        obj,
        "/spec/progressDeadlineSeconds",
        "spec.progressDeadlineSeconds",
        &mut out,
    );
    let ty = str_at(obj, "/spec/strategy/type").unwrap_or("RollingUpdate");
    match ty {
        "Recreate" => {
            if obj
                .pointer("/spec/strategy/rollingUpdate")
                .is_some_and(|v| !v.is_null())
            {
                out.push(Cause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            let surge = obj
                .pointer("/spec/strategy/rollingUpdate/maxSurge")
                .and_then(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxSurge", &mut out));
            let unavailable = obj
                .pointer("/spec/strategy/rollingUpdate/maxUnavailable")
                .and_then(|v| {
                    int_or_percent(v, "spec.strategy.rollingUpdate.maxUnavailable", &mut out)
                });
            if surge == Some(0) && unavailable == Some(0) {
                out.push(Cause::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    obj.pointer("/spec/strategy/rollingUpdate/maxUnavailable")
                        .unwrap_or(&Value::Null),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        other => out.push(Cause::not_supported(
            "spec.strategy.type",
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
    out
}

pub fn default_replicaset(obj: &mut Value) {
    default_field(obj_mut(obj, "spec"), "replicas", json!(1));
    default_template(obj, "/spec/template");
}

pub fn validate_replicaset(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    replicas_and_template(obj, &mut out);
    out
}

pub fn default_daemonset(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "revisionHistoryLimit", json!(10));
    default_field(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
    );
    default_template(obj, "/spec/template");
}

pub fn validate_daemonset(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_selector(obj, "/spec/template", "spec.template", &mut out);
    validate_template(obj, "/spec/template", "spec.template", &mut out);
    if let Some(t) = str_at(obj, "/spec/updateStrategy/type") {
        if !["RollingUpdate", "OnDelete"].contains(&t) {
            out.push(Cause::not_supported(
                "spec.updateStrategy.type",
                t,
                &["OnDelete", "RollingUpdate"],
            ));
        }
    }
    out
}

pub fn default_statefulset(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "replicas", json!(1));
    default_field(spec, "revisionHistoryLimit", json!(10));
    default_field(spec, "podManagementPolicy", json!("OrderedReady"));
    default_field(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
    default_field(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    default_template(obj, "/spec/template");
}

pub fn validate_statefulset(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    // The template's containers mount the claim templates by name: the
    // controller adds them as volumes, so validation sees them as such.
    let mut with_claims = obj.clone();
    let templates = obj
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, t) in templates.iter().enumerate() {
        let field = format!("spec.volumeClaimTemplates[{i}]");
        let name = str_at(t, "/metadata/name").unwrap_or_default();
        match crate::apiserver::admission::meta::dns1123_label(name) {
            _ if name.is_empty() => out.push(Cause::required(format!("{field}.metadata.name"))),
            Some(why) => out.push(Cause::invalid(format!("{field}.metadata.name"), name, why)),
            None => {}
        }
        for mut c in super::storage::validate_claim(t) {
            c.field = format!("{field}.{}", c.field);
            out.push(c);
        }
        if let Some(Value::Object(spec)) = with_claims.pointer_mut("/spec/template/spec") {
            let vols = spec.entry("volumes").or_insert_with(|| json!([]));
            if let Value::Array(vs) = vols {
                if !vs.iter().any(|v| str_at(v, "/name") == Some(name)) {
                    vs.push(json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
                }
            }
        }
    }
    let obj = &with_claims;
    replicas_and_template(obj, &mut out);
    if let Some(p) = str_at(obj, "/spec/podManagementPolicy") {
        if !["OrderedReady", "Parallel"].contains(&p) {
            out.push(Cause::not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
    }
    non_negative(
        obj,
        "/spec/updateStrategy/rollingUpdate/partition",
        "spec.updateStrategy.rollingUpdate.partition",
        &mut out,
    );
    out
}

pub fn validate_workload_update(new: &Value, old: &Value) -> Vec<Cause> {
    selector_immutable(new, old)
}

/// A StatefulSet's claims outlive its pods, so their templates are fixed.
pub fn validate_statefulset_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = selector_immutable(new, old);
    if new.pointer("/spec/volumeClaimTemplates") != old.pointer("/spec/volumeClaimTemplates") {
        out.push(Cause::forbidden(
            "spec.volumeClaimTemplates",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
    out
}

/// Jobs get a generated selector on their own uid, as Kubernetes does
/// unless `manualSelector` is set.
pub fn default_job(obj: &mut Value) {
    let uid = str_at(obj, "/metadata/uid").unwrap_or("").to_string();
    let name = str_at(obj, "/metadata/name").unwrap_or("").to_string();
    let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    let spec = obj_mut(obj, "spec");
    default_field(spec, "completions", json!(1));
    default_field(spec, "parallelism", json!(1));
    default_field(spec, "backoffLimit", json!(6));
    default_field(spec, "completionMode", json!("NonIndexed"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if !manual && !uid.is_empty() && spec.get("selector").is_none_or(Value::is_null) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let Some(template) = obj.pointer_mut("/spec/template") else {
            return;
        };
        let labels = obj_mut(template, "metadata")
            .entry("labels")
            .or_insert_with(|| json!({}));
        if let Value::Object(l) = labels {
            for (k, v) in [
                ("batch.kubernetes.io/controller-uid", &uid),
                ("controller-uid", &uid),
                ("batch.kubernetes.io/job-name", &name),
                ("job-name", &name),
            ] {
                l.entry(k).or_insert_with(|| json!(v));
            }
        }
    }
    default_template(obj, "/spec/template");
}

pub fn validate_job(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_job_spec(obj, "", "spec", &mut out);
    out
}

fn validate_job_spec(obj: &Value, base: &str, path: &str, out: &mut Vec<Cause>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(
            obj,
            &format!("{base}/spec/{f}"),
            &format!("{path}.{f}"),
            out,
        );
    }
    let mode = str_at(obj, &format!("{base}/spec/completionMode")).unwrap_or("NonIndexed");
    match mode {
        "NonIndexed" => {}
        "Indexed" => {
            if obj
                .pointer(&format!("{base}/spec/completions"))
                .is_none_or(Value::is_null)
            {
                out.push(Cause::required(format!("{path}.completions")));
            }
        }
        other => out.push(Cause::not_supported(
            format!("{path}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    let tp = format!("{path}.template");
    validate_template(obj, &format!("{base}/spec/template"), &tp, out);
    match str_at(obj, &format!("{base}/spec/template/spec/restartPolicy")) {
        Some("OnFailure") | Some("Never") => {}
        Some(p) => out.push(Cause::not_supported(
            format!("{tp}.spec.restartPolicy"),
            p,
            &["OnFailure", "Never"],
        )),
        None => out.push(Cause::required(format!("{tp}.spec.restartPolicy"))),
    }
}

pub fn validate_job_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = selector_immutable(new, old);
    immutable(
        new,
        old,
        "/spec/completionMode",
        "spec.completionMode",
        &mut out,
    );
    out
}

pub fn default_cronjob(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "concurrencyPolicy", json!("Allow"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "successfulJobsHistoryLimit", json!(3));
    default_field(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(Value::Object(m)) = obj.pointer_mut("/spec/jobTemplate/spec") {
        default_field(m, "backoffLimit", json!(6));
        default_field(m, "completionMode", json!("NonIndexed"));
    }
    default_template(obj, "/spec/jobTemplate/spec/template");
}

pub fn validate_cronjob(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    match str_at(obj, "/spec/schedule") {
        None | Some("") => out.push(Cause::required("spec.schedule")),
        Some(s) => {
            if let Err(why) = super::cron::Schedule::parse(s) {
                out.push(Cause::invalid("spec.schedule", s, why));
            }
        }
    }
    if let Some(tz) = str_at(obj, "/spec/timeZone") {
        if k8s_openapi::jiff::tz::TimeZone::get(tz).is_err() {
            out.push(Cause::invalid("spec.timeZone", tz, "unknown time zone"));
        }
    }
    if let Some(p) = str_at(obj, "/spec/concurrencyPolicy") {
        if !["Allow", "Forbid", "Replace"].contains(&p) {
            out.push(Cause::not_supported(
                "spec.concurrencyPolicy",
                p,
                &["Allow", "Forbid", "Replace"],
            ));
        }
    }
    non_negative(
        obj,
        "/spec/startingDeadlineSeconds",
        "spec.startingDeadlineSeconds",
        &mut out,
    );
    if obj.pointer("/spec/jobTemplate").is_none() {
        out.push(Cause::required("spec.jobTemplate"));
    } else {
        validate_job_spec(obj, "/spec/jobTemplate", "spec.jobTemplate.spec", &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(selector: Value, labels: Value) -> Value {
        json!({"spec": {"selector": selector, "template": {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "a", "image": "x"}]}}}})
    }

    #[test]
    fn deployment_rules() {
        let mut ok = deploy(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}));
        default_deployment(&mut ok);
        assert_eq!(ok["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert!(
            validate_deployment(&ok).is_empty(),
            "{:?}",
            validate_deployment(&ok)
        );

        let mismatch = deploy(json!({"matchLabels": {"app": "a"}}), json!({"app": "b"}));
        assert_eq!(
            validate_deployment(&mismatch)[0].field,
            "spec.template.metadata.labels"
        );

        let mut zero = ok.clone();
        zero["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": "0%"});
        zero["spec"]["replicas"] = json!(-1);
        let fields: Vec<String> = validate_deployment(&zero)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.replicas",
                "spec.strategy.rollingUpdate.maxUnavailable"
            ]
        );
    }

    #[test]
    fn job_selector_is_generated() {
        let mut job = json!({"metadata": {"name": "j", "uid": "u1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x"}]}}}});
        default_job(&mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert!(validate_job(&job).is_empty(), "{:?}", validate_job(&job));
        job["spec"]["completionMode"] = json!("Sometimes");
        assert_eq!(validate_job(&job)[0].field, "spec.completionMode");
    }
}
