//! The arithmetic of a rolling update, pure: how far the new ReplicaSet
//! may grow (`maxSurge`) and how far the old ones may shrink
//! (`maxUnavailable`), as Kubernetes' deployment controller computes them.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::controllers::intstr;

/// An int, or a percentage of `total`; unset is Kubernetes' default of 25%.
fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    let default = IntOrString::String("25%".into());
    intstr::scaled(v.unwrap_or(&default), total, round_up)
}

/// `(maxSurge, maxUnavailable)` as pod counts: surge rounds up,
/// unavailable down, and both zero becomes one unavailable so a rollout
/// can always move.
pub fn fenceposts(
    replicas: i32,
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
) -> (i32, i32) {
    let surge = scaled(max_surge, replicas, true);
    let unavailable = scaled(max_unavailable, replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// The new ReplicaSet's next size: up toward `replicas` within the surge
/// allowance over all ReplicaSets' sizes, or down if it is over.
pub fn new_replicas(replicas: i32, surge: i32, all_sizes: i32, new_size: i32) -> i32 {
    if new_size >= replicas {
        return replicas;
    }
    let room = replicas + surge - all_sizes;
    if room <= 0 {
        return new_size;
    }
    new_size + room.min(replicas - new_size)
}

/// One old ReplicaSet as scale-down sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Old {
    pub size: i32,
    pub available: i32,
}

/// New sizes for the old ReplicaSets (given oldest first): first shed
/// their unavailable pods, then available ones, never dropping the total
/// available below `replicas - maxUnavailable`.
pub fn scale_down_old(
    replicas: i32,
    max_unavailable: i32,
    new_size: i32,
    new_available: i32,
    old: &[Old],
) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|o| o.size).collect();
    let all: i32 = new_size + sizes.iter().sum::<i32>();
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_size - new_available).max(0);
    let mut budget = all - min_available - new_unavailable;
    if budget <= 0 {
        return sizes;
    }
    // Unhealthy old pods cost no availability: remove them first.
    for (i, o) in old.iter().enumerate() {
        if budget <= 0 {
            break;
        }
        let unhealthy = (o.size - o.available).max(0);
        let cut = unhealthy.min(budget);
        sizes[i] -= cut;
        budget -= cut;
    }
    // Then available ones, as far as availability allows.
    let available: i32 = new_available + old.iter().map(|o| o.available.min(o.size)).sum::<i32>();
    let mut allowed = available - min_available;
    for s in sizes.iter_mut() {
        if allowed <= 0 {
            break;
        }
        let cut = (*s).min(allowed);
        *s -= cut;
        allowed -= cut;
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(fenceposts(10, Some(&pct("25%")), Some(&pct("25%"))), (3, 2));
        assert_eq!(fenceposts(100, Some(&pct("25%")), None), (25, 25));
        assert_eq!(
            fenceposts(3, Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0))),
            (0, 1)
        );
        assert_eq!(fenceposts(1, None, None), (1, 0));
    }

    #[test]
    fn the_new_set_grows_within_the_surge() {
        // 10 replicas, surge 3, old set at 10: the new one may reach 3.
        assert_eq!(new_replicas(10, 3, 10, 0), 3);
        // At the ceiling it waits.
        assert_eq!(new_replicas(10, 3, 13, 3), 3);
        // A plain scale-up of the only set goes all the way.
        assert_eq!(new_replicas(50, 13, 3, 3), 50);
        // A scale-down is immediate.
        assert_eq!(new_replicas(0, 0, 50, 50), 0);
    }

    #[test]
    fn old_sets_shrink_only_as_far_as_availability_allows() {
        // 10 replicas, maxUnavailable 2; new set of 3 not yet available.
        let old = [Old {
            size: 10,
            available: 10,
        }];
        assert_eq!(scale_down_old(10, 2, 3, 0, &old), vec![8]);
        // Once the new pods are available, more old ones may go.
        assert_eq!(
            scale_down_old(
                10,
                2,
                3,
                3,
                &[Old {
                    size: 8,
                    available: 8
                }]
            ),
            vec![5]
        );
    }

    #[test]
    fn broken_old_pods_go_first_and_a_broken_new_set_stalls() {
        // Old set has 2 crashing pods: they go without touching availability.
        let old = [Old {
            size: 10,
            available: 8,
        }];
        assert_eq!(scale_down_old(10, 2, 1, 0, &old), vec![8]);
        // A new set that never becomes available: old ready pods stay.
        let old = [Old {
            size: 8,
            available: 8,
        }];
        assert_eq!(scale_down_old(10, 2, 5, 0, &old), vec![8]);
    }
}
