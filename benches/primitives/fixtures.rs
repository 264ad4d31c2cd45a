//! Shared fixtures: a pool of `n` components with one running pod each
//! (keys in a scrambled order), and the endpoint a route serves.

use std::path::PathBuf;

use vimanad::pool::{ComponentName, Endpoint, PodId, PodPool, Route};

/// A pool of `n` components, one running pod each: `n / 10` domains of up
/// to 10 services, version 1.0.0. Returns the pool and the (domain,
/// service) pairs in a scrambled order.
pub fn pool_of(n: usize) -> (PodPool, Vec<(String, String)>) {
    let mut pool = PodPool::default();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let domain = format!("tenant{}.example.com", i / 10);
        let service = format!("pkg.v1.Service{}", i % 10);
        let component = ComponentName::new(&domain, &service, "1.0.0").expect("valid name");
        let id = PodId::new(component, i as u64);
        pool.insert_pod(&id);
        pool.set_running(
            &id,
            PathBuf::from(format!("/run/vimanad/pods/{i}.sock")),
            1,
            Default::default(),
        );
        keys.push((domain, service));
    }
    // Scramble (multiplicative step coprime with n), so consecutive
    // lookups land far apart in the tables.
    let step = (0..).map(|k| 7919 + k).find(|s| gcd(*s, n) == 1).unwrap();
    let keys = (0..n).map(|i| keys[(i * step) % n].clone()).collect();
    (pool, keys)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub fn served(route: Route<'_>) -> &Endpoint {
    match route {
        Route::Serve(v) => &v.endpoints[0],
        other => panic!("not served: {other:?}"),
    }
}
