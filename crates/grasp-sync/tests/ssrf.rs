//! Every relay connection is checked and pinned (`driver::dial`): names that resolve to
//! loopback, private or link-local addresses are never dialled under the default
//! policy — neither for the websocket nor for NIP-11 — whatever spelling the URL uses,
//! and a name that answers differently from one lookup to the next (DNS rebinding)
//! only ever reaches an address that was checked. A test resolver stands in for DNS;
//! everything that is dialled is on 127.0.0.1.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grasp_sync::driver::{
    fetch_nip11, DialError, Dialer, ExecutorConfig, Nip11Error, PoolExecutor, Resolver,
};
use grasp_sync::ports::{EventStore, PortError, RelayUrlPolicy};
use grasp_sync::{Command, Input, RelayUrl, UrlPolicy};
use nostr::util::BoxedFuture;
use nostr::{Event, EventId, Filter, Timestamp};
use nostr_relay_builder::RelayBuilder;
use tokio::sync::mpsc;

mod support;

const STEP: Duration = Duration::from_secs(10);

/// Names → addresses, as the test says; counts lookups.
#[derive(Debug, Default)]
struct TestResolver {
    names: HashMap<String, Vec<Vec<IpAddr>>>,
    lookups: AtomicUsize,
}

impl TestResolver {
    /// `name` answers `answers[0]`, then `answers[1]`, ... round and round.
    fn with(mut self, name: &str, answers: &[&[&str]]) -> Self {
        let answers = answers
            .iter()
            .map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect())
            .collect();
        self.names.insert(name.to_owned(), answers);
        self
    }
}

impl Resolver for TestResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxedFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.names.get(host).map(|answers| {
            answers[n % answers.len()]
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        });
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "NXDOMAIN"))
        })
    }
}

struct NoEvents;

#[async_trait::async_trait]
impl EventStore for NoEvents {
    async fn negentropy_items(
        &self,
        _filter: &Filter,
    ) -> Result<Vec<(EventId, Timestamp)>, PortError> {
        Ok(Vec::new())
    }

    async fn stored_events(&self, _filter: &Filter) -> Result<Vec<Event>, PortError> {
        Ok(Vec::new())
    }
}

/// Waits for the connect's answer on `relay`: `Ok(())` connected, `Err(reason)`.
async fn connect(
    exec: &mut PoolExecutor,
    rx: &mut mpsc::Receiver<Input>,
    relay: &RelayUrl,
) -> Result<(), String> {
    exec.execute(Command::Connect {
        relay: relay.clone(),
    })
    .await
    .expect("command accepted");
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Input::RelayConnected { relay: r })) if &r == relay => return Ok(()),
            Ok(Some(Input::RelayConnectFailed { relay: r, reason })) if &r == relay => {
                return Err(reason)
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("input channel closed"),
            Err(_) => panic!("no answer to Connect {relay}"),
        }
    }
}

/// A listener that must never see a connection.
fn trap(ip: &str) -> TcpListener {
    let l = TcpListener::bind((ip, 0)).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn assert_untouched(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a refused address was dialled: {other:?}"),
    }
}

#[tokio::test]
async fn ssrf_names_resolving_to_internal_addresses_are_never_dialled() {
    grasp_sync::install_default_crypto_provider();
    let trap = trap("127.0.0.1");
    let port = trap.local_addr().unwrap().port();
    let resolver = Arc::new(
        TestResolver::default()
            .with("internal.test", &[&["127.0.0.1"]])
            .with("private.test", &[&["10.0.0.7"]])
            .with("cgnat.test", &[&["100.64.1.1"]])
            .with("linklocal.test", &[&["169.254.169.254"]])
            .with("mapped.test", &[&["::ffff:127.0.0.1"]])
            .with("v6local.test", &[&["fd00::1"]])
            .with("mixed.test", &[&["93.184.216.34", "127.0.0.1"]]),
    );
    let policy: Arc<dyn RelayUrlPolicy> = Arc::new(UrlPolicy::default());
    let dialer = Dialer::new(policy.clone(), resolver.clone());
    let (mut exec, mut rx) = PoolExecutor::new(
        Arc::new(NoEvents),
        dialer.clone(),
        ExecutorConfig::default(),
    );
    for (name, range) in [
        ("internal.test", "loopback"),
        ("private.test", "private"),
        ("cgnat.test", "CGNAT"),
        ("linklocal.test", "link-local"),
        ("mapped.test", "loopback"),
        ("v6local.test", "private"),
        ("mixed.test", "loopback"),
    ] {
        let relay = RelayUrl::parse(&format!("ws://{name}:{port}")).unwrap();
        assert!(
            policy.permits_relay(&relay),
            "{name}: a name passes the syntactic check; the address check must catch it"
        );
        let reason = connect(&mut exec, &mut rx, &relay)
            .await
            .expect_err("must not connect");
        assert!(
            reason.contains("refused by the URL policy") && reason.contains(range),
            "{name}: {reason}"
        );
        let nip11 = fetch_nip11(&relay, &dialer, STEP).await;
        assert!(
            matches!(nip11, Err(Nip11Error::Dial(DialError::Refused(ref r))) if r.contains(range)),
            "{name}: NIP-11 {nip11:?}"
        );
    }
    assert_untouched(&trap);
    exec.shutdown().await;
}

#[tokio::test]
async fn ssrf_numeric_and_mapped_spellings_of_loopback_are_refused() {
    grasp_sync::install_default_crypto_provider();
    let trap = trap("127.0.0.1");
    let port = trap.local_addr().unwrap().port();
    let policy: Arc<dyn RelayUrlPolicy> = Arc::new(UrlPolicy::default());
    let dialer = Dialer::new(policy.clone(), Arc::new(TestResolver::default()));
    let (mut exec, mut rx) = PoolExecutor::new(
        Arc::new(NoEvents),
        dialer.clone(),
        ExecutorConfig::default(),
    );
    for spelling in [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "localhost",
        "LOCALHOST.",
        "a.localhost",
    ] {
        let raw = format!("ws://{spelling}:{port}");
        let Ok(relay) = RelayUrl::parse(&raw) else {
            continue; // not a URL at all: nothing to dial
        };
        assert!(
            !policy.permits_relay(&relay),
            "{raw} (read as {relay}) passes the relay policy"
        );
        // Even if a host skipped that check, the dial refuses the address itself
        // (names like `localhost` are not resolved by the test resolver: refused too).
        let reason = connect(&mut exec, &mut rx, &relay)
            .await
            .expect_err("must not connect");
        assert!(
            reason.contains("refused by the URL policy") || reason.contains("does not resolve"),
            "{raw}: {reason}"
        );
        assert!(fetch_nip11(&relay, &dialer, STEP).await.is_err());
    }
    assert_untouched(&trap);
    exec.shutdown().await;
}

/// Permits 127.0.0.1 (where the test's relay runs) and refuses every other address:
/// 127.0.0.3 stands for "inside our network".
struct OnlyLoopbackOne;

impl RelayUrlPolicy for OnlyLoopbackOne {
    fn permits_relay(&self, _url: &RelayUrl) -> bool {
        true
    }

    fn check_address(&self, _host: &str, addr: IpAddr) -> Result<(), String> {
        if addr == IpAddr::from([127, 0, 0, 1]) {
            Ok(())
        } else {
            Err(format!("{addr} is internal"))
        }
    }
}

#[tokio::test]
async fn ssrf_rebinding_name_only_reaches_the_checked_address() {
    grasp_sync::install_default_crypto_provider();
    let (relay, relay_url) = support::listen(RelayBuilder::default(), 0).await;
    let port = relay_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    // The same port on 127.0.0.3: where a rebinding answer would lead.
    let inside = TcpListener::bind(("127.0.0.3", port)).unwrap();
    inside.set_nonblocking(true).unwrap();
    let resolver = Arc::new(TestResolver::default().with(
        "rebind.test",
        &[&["127.0.0.1"], &["127.0.0.1"], &["127.0.0.3"]],
    ));
    let dialer = Dialer::new(Arc::new(OnlyLoopbackOne), resolver.clone());
    let (mut exec, mut rx) = PoolExecutor::new(
        Arc::new(NoEvents),
        dialer.clone(),
        ExecutorConfig::default(),
    );
    let url = RelayUrl::parse(&format!("ws://rebind.test:{port}")).unwrap();

    let mut connected = 0;
    let mut refused = 0;
    for _ in 0..3 {
        match connect(&mut exec, &mut rx, &url).await {
            Ok(()) => {
                connected += 1;
                exec.execute(Command::Disconnect { relay: url.clone() })
                    .await
                    .unwrap();
                let deadline = tokio::time::Instant::now() + STEP;
                while !matches!(
                    tokio::time::timeout_at(deadline, rx.recv()).await,
                    Ok(Some(Input::RelayDisconnected { .. })) | Err(_)
                ) {}
            }
            Err(reason) => {
                assert!(reason.contains("127.0.0.3 is internal"), "{reason}");
                refused += 1;
            }
        }
        // NIP-11 either reaches 127.0.0.1 (whatever it answers there) or is refused.
        if let Err(Nip11Error::Dial(DialError::Refused(r))) = fetch_nip11(&url, &dialer, STEP).await
        {
            assert!(r.contains("127.0.0.3"), "{r}");
        }
    }
    assert!(
        connected >= 1 && refused >= 1,
        "{connected} connected, {refused} refused"
    );
    // One lookup per dial (websocket and NIP-11 alike), never a second one to connect.
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 6);
    assert_untouched(&inside);
    exec.shutdown().await;
    drop(relay);
}
