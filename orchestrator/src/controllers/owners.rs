//! Owner references and label selectors as controllers use them: who
//! controls an object, how to claim one, and whether a selector picks it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::apiserver::selectors;

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Is `meta` controlled by the object with `uid`?
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A controller reference to `owner`, blocking its foreground deletion
/// until the dependent is gone (as Kubernetes' controllers set it).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let m = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A compiled label selector.
pub struct Selector(selectors::LabelSelector);

impl Selector {
    /// Compiles `sel`; an invalid one (which admission should have
    /// refused) is an error naming the problem.
    pub fn new(sel: &LabelSelector) -> Result<Selector, String> {
        let v = serde_json::to_value(sel).map_err(|e| e.to_string())?;
        selectors::LabelSelector::from_structured(&v).map(Selector)
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        self.0.matches_by(&get)
    }
}

/// Makes `owner` the controller of the orphan `obj` (whose labels its
/// selector matches), keeping any other owner references.
pub async fn adopt<K>(client: &Client, obj: &K, owner: OwnerReference) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let m = obj.meta();
    let mut refs = m.owner_references.clone().unwrap_or_default();
    refs.push(owner);
    set_owners(client, obj, refs).await
}

/// Drops the controller reference to `owner_uid` from `obj`, which no
/// longer matches its owner's selector.
pub async fn release<K>(client: &Client, obj: &K, owner_uid: &str) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let refs: Vec<OwnerReference> = obj
        .meta()
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != owner_uid)
        .collect();
    set_owners(client, obj, refs).await
}

async fn set_owners<K>(
    client: &Client,
    obj: &K,
    refs: Vec<OwnerReference>,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let m = obj.meta();
    let api: Api<K> = Api::namespaced(client.clone(), m.namespace.as_deref().unwrap_or("default"));
    // The uid makes this a precondition: a pod recreated under the same
    // name is not claimed by mistake.
    let patch = json!({"metadata": {"uid": m.uid, "ownerReferences": refs}});
    api.patch(
        m.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        let s = Selector::new(&sel).expect("valid");
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.matches(Some(&l(&[("app", "web")]))));
        assert!(!s.matches(Some(&l(&[("app", "web"), ("tier", "db")]))));
        assert!(!s.matches(Some(&l(&[("app", "api")]))));
        assert!(!s.matches(None));
    }
}
