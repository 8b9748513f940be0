//! CQRS, the command side: the specification of `scalekit::cqrs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use scalekit::cqrs::{
    Command, CommandBus, CommandContext, CommandError, CommandHandler, Recorded, Retry, Timing,
    Validate,
};
use scalekit::events::{Event, EventBus, StartFrom, TopicOptions};
use scalekit::testing::{FaultyStore, Operation};
use scalekit::{ErrorKind, MemoryStore, Position};

type Writes = Arc<FaultyStore<MemoryStore<String, Vec<u8>>>>;

/// Creates a post; an empty text is rejected.
#[derive(Clone)]
struct CreatePost {
    author: String,
    text: String,
    request: Option<String>,
}

impl Command for CreatePost {
    type Output = u64;
    fn idempotency_key(&self) -> Option<String> {
        self.request.clone()
    }
}

struct Posts;

impl CommandHandler<CreatePost, String> for Posts {
    async fn handle(
        &self,
        command: CreatePost,
        context: &mut CommandContext<'_, String>,
    ) -> Result<u64, CommandError> {
        if command.text.is_empty() {
            return Err(CommandError::Rejected("a post needs text".into()));
        }
        let id = context.get::<u64>("posts/count").await?.unwrap_or(0) + 1;
        context.put("posts/count", &id)?;
        context.put(format!("post/{id}"), &command.text)?;
        context.emit(format!("{}:{id}:{}", command.author, command.text));
        Ok(id)
    }
}

fn writes() -> Writes {
    Arc::new(FaultyStore::builder(MemoryStore::new()).build().unwrap())
}

fn post(author: &str, text: &str) -> CreatePost {
    CreatePost {
        author: author.into(),
        text: text.into(),
        request: None,
    }
}

#[tokio::test]
async fn a_command_commits_its_writes_and_events_together_and_returns_a_token() {
    let store = writes();
    let bus = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .build()
        .unwrap();
    let first = bus.dispatch(post("ann", "hello")).await.unwrap();
    let second = bus.dispatch(post("bob", "hi")).await.unwrap();
    assert_eq!((first.output, first.token), (1, Position::new(1)));
    assert_eq!((second.output, second.token), (2, Position::new(2)));
    assert_eq!(bus.position().await.unwrap(), Position::new(2));
    assert_eq!(
        store.calls().write_if,
        2,
        "one conditional batch per command sent alone"
    );
    let log = bus.read_log(0, 2).await.unwrap();
    assert_eq!(
        log[1],
        Recorded {
            sequence: 1,
            event: "bob:2:hi".to_string()
        }
    );
}

#[tokio::test]
async fn a_rejected_command_writes_nothing_and_is_told_apart_from_an_outage() {
    let store = writes();
    let bus = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .build()
        .unwrap();
    let rejected = bus.dispatch(post("ann", "")).await.unwrap_err();
    assert!(matches!(rejected, CommandError::Rejected(_)), "{rejected}");
    assert_eq!(store.calls().write_if + store.calls().write_batch, 0);
    store.set_failing(true);
    let failed = bus.dispatch(post("ann", "hello")).await.unwrap_err();
    assert!(
        matches!(&failed, CommandError::Failed(e) if e.is_transient()),
        "{failed}"
    );
    store.set_failing(false);
    assert_eq!(
        bus.position().await.unwrap(),
        Position::ZERO,
        "nothing committed"
    );
}

#[tokio::test]
async fn a_command_without_a_handler_and_two_handlers_for_one_command_are_config_errors() {
    #[derive(Clone)]
    struct Unhandled;
    impl Command for Unhandled {
        type Output = u64;
    }
    let bus = CommandBus::<_, String>::builder(writes(), "posts")
        .build()
        .unwrap();
    match bus.dispatch(Unhandled).await.unwrap_err() {
        CommandError::Failed(error) => assert!(matches!(error.kind(), ErrorKind::Config { .. })),
        other => panic!("{other}"),
    }
    let twice = CommandBus::<_, String>::builder(writes(), "posts")
        .handle(Posts)
        .handle(Posts)
        .build()
        .unwrap_err();
    assert!(matches!(twice.kind(), ErrorKind::Config { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_command_key_sent_a_hundred_times_at_once_writes_once() {
    let store = writes();
    let bus = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .build()
        .unwrap();
    let sends: Vec<_> = (0..100)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.dispatch(CreatePost {
                    author: "ann".into(),
                    text: "once".into(),
                    request: Some("request-7".into()),
                })
                .await
                .unwrap()
            })
        })
        .collect();
    let mut receipts = Vec::new();
    for send in sends {
        receipts.push(send.await.unwrap());
    }
    assert_eq!(bus.position().await.unwrap(), Position::new(1), "one event");
    assert!(receipts
        .iter()
        .all(|r| (r.output, r.token) == (1, Position::new(1))));
    assert_eq!(receipts.iter().filter(|r| !r.repeated).count(), 1);
    assert_eq!(bus.position().await.unwrap(), Position::new(1), "one event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_a_crash_are_published_on_recovery_and_lose_nothing() {
    let store = writes();
    // Before the crash: the bus's topic is gone (its process is dying), so
    // commits succeed and publishing fails.
    let dying = EventBus::new();
    let topic = dying.topic::<Recorded<String>>("posts").unwrap();
    dying.shutdown().await;
    let before = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .publish_to(topic)
        .build()
        .unwrap();
    for n in 0..5 {
        before
            .dispatch(post("ann", &format!("p{n}")))
            .await
            .unwrap();
    }
    drop(before);

    // After the restart: a projection subscribes, the bus recovers.
    let events = EventBus::new();
    let topic = events
        .topic_with::<Recorded<String>>("posts", TopicOptions::default().retain_last(100))
        .unwrap();
    let projected: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let into = Arc::clone(&projected);
    let projection = topic
        .group("timeline")
        .start_from(StartFrom::Earliest)
        .subscribe(move |event: Event<Recorded<String>>| {
            let recorded = event.into_payload();
            into.lock()
                .unwrap()
                .insert(recorded.sequence, recorded.event);
            std::future::ready(Ok(()))
        })
        .unwrap();
    let after = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .publish_to(topic)
        .build()
        .unwrap();
    assert_eq!(after.recover().await.unwrap(), 5);
    assert_eq!(after.recover().await.unwrap(), 0, "published once");
    after.dispatch(post("bob", "later")).await.unwrap();
    projection.caught_up().await;
    let from_scratch: BTreeMap<u64, String> = after
        .read_log(0, 6)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.sequence, r.event))
        .collect();
    assert_eq!(*projected.lock().unwrap(), from_scratch);
    events.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn one_pipeline_validates_retries_and_times_commands() {
    // Every second batch fails: the retry layer makes each command land.
    let store = Arc::new(
        FaultyStore::builder(MemoryStore::new())
            .fail_every(2)
            .on(&[Operation::WriteBatch])
            .build()
            .unwrap(),
    );
    let timing = Timing::new();
    let bus = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .layer(timing.clone())
        .layer(Validate::new(|post: &CreatePost| {
            if post.text.len() > 10 {
                Err("at most 10 characters".to_string())
            } else {
                Ok(())
            }
        }))
        .layer(Retry {
            retries: 2,
            backoff: std::time::Duration::from_millis(1),
        })
        .build()
        .unwrap();
    for n in 0..5 {
        // Retry re-runs only commands with an idempotency key.
        let mut command = post("ann", &format!("p{n}"));
        command.request = Some(format!("request {n}"));
        let receipt = bus.dispatch(command).await.unwrap();
        assert_eq!(receipt.output, n + 1);
    }
    let refused = bus
        .dispatch(post("ann", "far too long a post"))
        .await
        .unwrap_err();
    assert!(matches!(refused, CommandError::Rejected(_)), "{refused}");
    let timings = timing.timings();
    let posts = timings.values().next().unwrap();
    assert_eq!((posts.count, posts.failed), (6, 1));
    assert_eq!(
        bus.position().await.unwrap(),
        Position::new(5),
        "each command once"
    );
}

mod read_side {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;
    use scalekit::cqrs::{
        CommandBus, EventSource, Projection, ProjectionOptions, Query, QueryBus, QueryError,
        QueryHandler, Recorded,
    };
    use scalekit::store::Scan;
    use scalekit::{MemoryStore, Store};

    use super::{post, Posts};

    type Timelines = MemoryStore<String, Vec<u64>>;
    type Bus = CommandBus<Arc<MemoryStore<String, Vec<u8>>>, String>;

    fn bus() -> Bus {
        CommandBus::builder(Arc::new(MemoryStore::new()), "posts")
            .handle(Posts)
            .build()
            .unwrap()
    }

    /// A timeline projection: each post's id appended to its author's
    /// timeline (at most once, so applying an event twice is harmless),
    /// after `delay` per event.
    async fn timelines(
        bus: &Bus,
        name: &str,
        delays: Arc<Vec<u64>>,
    ) -> Projection<Timelines, String> {
        let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
        Projection::start(
            name,
            source,
            Timelines::new(),
            MemoryStore::<String, Vec<u8>>::new().into_dyn(),
            move |recorded: Recorded<String>, timelines: Arc<Timelines>| {
                let delay = delays
                    .get(recorded.sequence as usize % delays.len().max(1))
                    .copied()
                    .unwrap_or(0);
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut parts = recorded.event.splitn(3, ':');
                    let author = parts.next().unwrap_or_default().to_string();
                    let id: u64 = parts.next().unwrap_or_default().parse()?;
                    let mut timeline = timelines.get(&author).await?.unwrap_or_default();
                    if !timeline.contains(&id) {
                        timeline.push(id);
                        timelines.put(author, timeline).await?;
                    }
                    Ok(())
                }
            },
        )
        .await
        .unwrap()
    }

    #[derive(Clone)]
    struct GetTimeline(String);

    impl Query for GetTimeline {
        type Output = Vec<u64>;
    }

    struct Timeline(Projection<Timelines, String>);

    impl QueryHandler<GetTimeline> for Timeline {
        async fn handle(&self, query: GetTimeline) -> scalekit::Result<Vec<u64>> {
            Ok(self.0.read_model().get(&query.0).await?.unwrap_or_default())
        }
    }

    fn queries(
        projection: &Projection<Timelines, String>,
        wait: Duration,
    ) -> QueryBus<Projection<Timelines, String>> {
        QueryBus::builder(projection.clone())
            .handle(Timeline(projection.clone()))
            .wait_at_most(wait)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// With random projection delays, a query with a command's token
        /// always sees the command's post.
        #[test]
        fn a_query_with_a_commands_token_never_sees_an_older_read_model(
            delays in prop::collection::vec(0u64..30, 1..8),
            authors in prop::collection::vec(0usize..3, 1..20),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let bus = bus();
                let projection = timelines(&bus, "timelines", Arc::new(delays)).await;
                let queries = queries(&projection, Duration::from_secs(60));
                for author in authors {
                    let author = format!("user{author}");
                    let receipt = bus.dispatch(post(&author, "text")).await.unwrap();
                    let timeline = queries
                        .query_after(GetTimeline(author.clone()), receipt.token)
                        .await
                        .unwrap();
                    prop_assert!(timeline.contains(&receipt.output), "{author}: {timeline:?}");
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queries_run_through_the_same_pipeline_type_as_commands() {
        let bus = bus();
        let projection = timelines(&bus, "piped", Arc::new(vec![0])).await;
        let timing = scalekit::cqrs::Timing::new();
        let queries = QueryBus::builder(projection.clone())
            .handle(Timeline(projection.clone()))
            .layer(timing.clone())
            .layer(scalekit::cqrs::Validate::new(|query: &GetTimeline| {
                if query.0.is_empty() {
                    Err("whose timeline?".to_string())
                } else {
                    Ok(())
                }
            }))
            .build()
            .unwrap();
        let receipt = bus.dispatch(post("ann", "hi")).await.unwrap();
        let timeline = queries
            .query_after(GetTimeline("ann".into()), receipt.token)
            .await
            .unwrap();
        assert_eq!(timeline, vec![1]);
        match queries.query(GetTimeline(String::new())).await {
            Err(QueryError::Rejected(reason)) => assert_eq!(reason, "whose timeline?"),
            other => panic!("{other:?}"),
        }
        let timed = timing.timings();
        let counted = timed.values().next().unwrap();
        assert_eq!((counted.count, counted.failed), (2, 1));
        let twice = QueryBus::builder(projection.clone())
            .handle(Timeline(projection.clone()))
            .handle(Timeline(projection.clone()))
            .build()
            .unwrap_err();
        assert!(matches!(twice.kind(), scalekit::ErrorKind::Config { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_waits_at_most_its_limit_then_says_stale() {
        let bus = bus();
        let projection = timelines(&bus, "slow", Arc::new(vec![10_000])).await;
        let queries = queries(&projection, Duration::from_millis(100));
        let receipt = bus.dispatch(post("ann", "hello")).await.unwrap();
        // Without a token the read model may be behind: allowed.
        assert_eq!(
            queries.query(GetTimeline("ann".into())).await.unwrap(),
            Vec::<u64>::new()
        );
        match queries
            .query_after(GetTimeline("ann".into()), receipt.token)
            .await
        {
            Err(QueryError::Stale(stale)) => {
                assert_eq!(stale.wanted, receipt.token);
                assert!(stale.reached < stale.wanted);
                assert_eq!(stale.waited, Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_while_commands_arrive_swaps_in_a_read_model_equal_to_the_live_one() {
        let bus = bus();
        let projection = timelines(&bus, "live", Arc::new(vec![0])).await;
        for n in 0..50 {
            bus.dispatch(post(&format!("user{}", n % 4), "before"))
                .await
                .unwrap();
        }
        let writer = {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..150 {
                    bus.dispatch(post(&format!("user{}", n % 4), "during"))
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let old = projection.read_model();
        projection.rebuild(Timelines::new()).await.unwrap();
        assert!(!Arc::ptr_eq(&old, &projection.read_model()), "swapped");
        writer.await.unwrap();
        let end = bus.position().await.unwrap();
        projection
            .wait_for(end, Duration::from_secs(10))
            .await
            .unwrap();
        let fresh = timelines(&bus, "from-scratch", Arc::new(vec![0])).await;
        fresh.wait_for(end, Duration::from_secs(10)).await.unwrap();
        let sorted = |mut entries: Vec<(String, Vec<u64>)>| {
            entries.sort();
            entries
        };
        let rebuilt = sorted(projection.read_model().entries().await.unwrap());
        assert_eq!(rebuilt, sorted(fresh.read_model().entries().await.unwrap()));
        assert_eq!(rebuilt.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_projection_resumes_from_its_checkpoint_and_a_poison_event_is_set_aside() {
        let bus = bus();
        let checkpoints = MemoryStore::<String, Vec<u8>>::new().into_dyn();
        let applied = Arc::new(AtomicU64::new(0));
        let start = |applied: Arc<AtomicU64>| {
            let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
            Projection::start(
                "counted",
                source,
                Timelines::new(),
                Arc::clone(&checkpoints),
                move |recorded: Recorded<String>, _: Arc<Timelines>| {
                    let applied = Arc::clone(&applied);
                    async move {
                        if recorded.event.contains("poison") {
                            return Err("cannot apply".into());
                        }
                        applied.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
            )
        };
        let first = start(Arc::clone(&applied)).await.unwrap();
        for text in ["a", "poison", "b"] {
            bus.dispatch(post("ann", text)).await.unwrap();
        }
        first
            .wait_for(bus.position().await.unwrap(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(applied.load(Ordering::SeqCst), 2);
        let dead = first.dead_events();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event.sequence, 1);
        drop(first);

        bus.dispatch(post("ann", "c")).await.unwrap();
        let second = start(Arc::clone(&applied)).await.unwrap();
        assert_eq!(second.position().get(), 3, "resumed from the checkpoint");
        second
            .wait_for(bus.position().await.unwrap(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            applied.load(Ordering::SeqCst),
            3,
            "only the new event applied"
        );
        assert!(second.is_caught_up().await.unwrap());
        // The set-aside event outlived the restart: it was recorded before
        // the checkpoint passed it.
        let dead = second.dead_events();
        assert_eq!(dead.len(), 1, "still known after the restart");
        assert_eq!(dead[0].event.sequence, 1);
        assert!(dead[0].event.event.contains("poison"));
        assert_eq!(dead[0].attempts, 4, "the first try and three retries");
        assert!(dead[0].error.to_string().contains("cannot apply"));
    }

    #[tokio::test(start_paused = true)]
    async fn set_aside_events_are_replayed_once_their_cause_is_fixed_and_then_forgotten() {
        let bus = bus();
        let checkpoints = MemoryStore::<String, Vec<u8>>::new().into_dyn();
        let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let applied = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = || {
            let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
            let (fixed, applied) = (Arc::clone(&fixed), Arc::clone(&applied));
            let options = ProjectionOptions {
                retries: 1,
                backoff: Duration::from_millis(1),
                ..ProjectionOptions::default()
            };
            Projection::start_with(
                "replayed",
                source,
                Timelines::new(),
                Arc::clone(&checkpoints),
                options,
                move |recorded: Recorded<String>, _: Arc<Timelines>| {
                    let (fixed, applied) = (Arc::clone(&fixed), Arc::clone(&applied));
                    async move {
                        if recorded.event.contains("poison") && !fixed.load(Ordering::SeqCst) {
                            return Err("a bug".into());
                        }
                        applied.lock().unwrap().push(recorded.sequence);
                        Ok(())
                    }
                },
            )
        };
        let first = start().await.unwrap();
        for text in ["a", "poison 1", "b", "poison 2"] {
            bus.dispatch(post("ann", text)).await.unwrap();
        }
        let end = bus.position().await.unwrap();
        first.wait_for(end, Duration::from_secs(10)).await.unwrap();
        assert_eq!(first.dead_events().len(), 2);
        assert_eq!(
            first.dead_events()[0].attempts,
            2,
            "retries are configurable"
        );
        drop(first);
        fixed.store(true, Ordering::SeqCst);
        let second = start().await.unwrap();
        assert_eq!(second.dead_events().len(), 2);
        assert_eq!(second.replay_dead_events().await.unwrap(), 2);
        assert!(second.dead_events().is_empty());
        assert_eq!(*applied.lock().unwrap(), vec![0, 2, 1, 3]);
        drop(second);
        let third = start().await.unwrap();
        assert!(third.dead_events().is_empty(), "forgotten once replayed");
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_limit_of_set_aside_events_a_projection_stops_instead_of_skipping() {
        let bus = bus();
        let checkpoints = MemoryStore::<String, Vec<u8>>::new().into_dyn();
        let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
        let options = ProjectionOptions {
            retries: 0,
            max_dead_events: 1,
            batch: 1,
            ..ProjectionOptions::default()
        };
        let projection = Projection::start_with(
            "bounded",
            source,
            Timelines::new(),
            Arc::clone(&checkpoints),
            options,
            |recorded: Recorded<String>, _: Arc<Timelines>| async move {
                if recorded.event.contains("poison") {
                    return Err("cannot apply".into());
                }
                Ok(())
            },
        )
        .await
        .unwrap();
        for text in ["poison 1", "poison 2", "fine"] {
            bus.dispatch(post("ann", text)).await.unwrap();
        }
        let stale = projection
            .wait_for(bus.position().await.unwrap(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(
            stale.reached.get(),
            1,
            "stopped before the second poison event"
        );
        assert_eq!(projection.dead_events().len(), 1);
        let bad = ProjectionOptions {
            max_dead_events: 0,
            ..ProjectionOptions::default()
        };
        let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
        let error = Projection::start_with(
            "bad",
            source,
            Timelines::new(),
            checkpoints,
            bad,
            |_, _| async { Ok(()) },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error.kind(), scalekit::ErrorKind::Config { .. }),
            "{error}"
        );
    }
}

/// A write store whose next `write_batch`, once armed, is applied and then
/// reported as failed (the connection dropped after the commit).
#[derive(Debug, Default)]
struct CommitsThenFails {
    inner: MemoryStore<String, Vec<u8>>,
    armed: std::sync::atomic::AtomicBool,
}

impl scalekit::Store for CommitsThenFails {
    type Key = String;
    type Value = Vec<u8>;

    async fn get(&self, key: &String) -> scalekit::Result<Option<Vec<u8>>> {
        scalekit::Store::get(&self.inner, key).await
    }
    async fn put(&self, key: String, value: Vec<u8>) -> scalekit::Result<Position> {
        self.write_batch(vec![scalekit::Write::Put(key, value)])
            .await
    }
    async fn delete(&self, key: &String) -> scalekit::Result<Position> {
        self.write_batch(vec![scalekit::Write::Delete(key.clone())])
            .await
    }
    async fn write_batch(
        &self,
        batch: Vec<scalekit::Write<String, Vec<u8>>>,
    ) -> scalekit::Result<Position> {
        let applied = scalekit::Store::write_batch(&self.inner, batch).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Err(scalekit::Error::unavailable(
                "test",
                "connection lost after the commit",
            ));
        }
        Ok(applied)
    }
    async fn get_versioned(
        &self,
        key: &String,
    ) -> scalekit::Result<Option<scalekit::Versioned<Vec<u8>>>> {
        scalekit::Store::get_versioned(&self.inner, key).await
    }
    async fn write_if(
        &self,
        checks: Vec<scalekit::Check<String>>,
        batch: Vec<scalekit::Write<String, Vec<u8>>>,
    ) -> scalekit::Result<Position> {
        let applied = scalekit::Store::write_if(&self.inner, checks, batch).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Err(scalekit::Error::unavailable(
                "test",
                "connection lost after the commit",
            ));
        }
        Ok(applied)
    }
}

#[tokio::test]
async fn retry_never_reruns_a_command_whose_commit_may_have_happened_without_its_key() {
    let store = Arc::new(CommitsThenFails::default());
    let bus = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
        .handle(Posts)
        .layer(Retry {
            retries: 3,
            backoff: std::time::Duration::from_millis(1),
        })
        .build()
        .unwrap();
    // Without a key: the failure is returned, not retried, so the post
    // that did commit is not written twice.
    store
        .armed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let error = bus.dispatch(post("ann", "once")).await.unwrap_err();
    assert!(matches!(error, CommandError::Failed(_)), "{error}");
    // With a key: retried, and the retry finds the first commit.
    store
        .armed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut keyed = post("bob", "keyed");
    keyed.request = Some("bob-1".into());
    let receipt = bus.dispatch(keyed).await.unwrap();
    let last = bus.position().await.unwrap().get();
    let events = bus.read_log(0, last).await.unwrap();
    let texts: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        texts.iter().filter(|t| t.ends_with(":once")).count(),
        1,
        "the keyless post is in the log once: {texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.ends_with(":keyed")).count(),
        1,
        "the keyed post is in the log once: {texts:?}"
    );
    assert_eq!(receipt.output, 2);
}

/// Projections run under a lease, as app servers sharing one store run
/// them: the holder applies, the others follow its stored checkpoint.
mod leased_projections {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use scalekit::cqrs::{
        projection_lease, CommandBus, EventSource, Projection, ProjectionOptions, Query, QueryBus,
        QueryHandler, Recorded,
    };
    use scalekit::lease::Fenced;
    use scalekit::{MemoryStore, Store};

    use super::{post, Posts};

    type Shared = Arc<MemoryStore<String, Vec<u8>>>;
    type Bus = CommandBus<Shared, String>;

    /// Each author's post ids, in the shared store, written under the
    /// runner's fence; and how many events this process applied.
    struct Seen {
        store: Fenced<Shared>,
        applied: AtomicU64,
    }

    fn encode(ids: &[u64]) -> Vec<u8> {
        ids.iter().flat_map(|id| id.to_be_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|id| u64::from_be_bytes(id.try_into().unwrap()))
            .collect()
    }

    fn bus(store: &Shared) -> Bus {
        CommandBus::builder(Arc::clone(store), "posts")
            .handle(Posts)
            .build()
            .unwrap()
    }

    /// One process's runner of the "seen" projection.
    async fn runner(store: &Shared, bus: &Bus, ttl: Duration) -> Projection<Seen, String> {
        let checkpoints = Arc::clone(store).into_dyn();
        let lease = projection_lease(Arc::clone(&checkpoints), "seen", ttl);
        let seen = Seen {
            store: Fenced::new(Arc::clone(store), lease.fence()),
            applied: AtomicU64::new(0),
        };
        let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
        let options = ProjectionOptions {
            poll: Duration::from_millis(5),
            ..ProjectionOptions::default()
        };
        Projection::start_leased(
            "seen",
            source,
            seen,
            checkpoints,
            options,
            lease,
            |recorded: Recorded<String>, seen: Arc<Seen>| async move {
                seen.applied.fetch_add(1, Ordering::Relaxed);
                let mut parts = recorded.event.splitn(3, ':');
                let key = format!("seen/{}", parts.next().unwrap_or_default());
                let id: u64 = parts.next().unwrap_or_default().parse()?;
                let mut ids = decode(&seen.store.get(&key).await?.unwrap_or_default());
                if !ids.contains(&id) {
                    ids.push(id);
                    seen.store.put(key, encode(&ids)).await?;
                }
                Ok(())
            },
        )
        .await
        .unwrap()
    }

    #[derive(Clone)]
    struct SeenBy(String);

    impl Query for SeenBy {
        type Output = Vec<u64>;
    }

    struct SeenHandler(Projection<Seen, String>);

    impl QueryHandler<SeenBy> for SeenHandler {
        async fn handle(&self, query: SeenBy) -> scalekit::Result<Vec<u64>> {
            let key = format!("seen/{}", query.0);
            Ok(decode(
                &self
                    .0
                    .read_model()
                    .store
                    .get(&key)
                    .await?
                    .unwrap_or_default(),
            ))
        }
    }

    fn queries(projection: &Projection<Seen, String>) -> QueryBus<Projection<Seen, String>> {
        QueryBus::builder(projection.clone())
            .handle(SeenHandler(projection.clone()))
            .wait_at_most(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn applied(projection: &Projection<Seen, String>) -> u64 {
        projection.read_model().applied.load(Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_holder_applies_and_every_process_answers_queries_after_a_token() {
        let store: Shared = Arc::new(MemoryStore::new());
        let buses = [bus(&store), bus(&store)];
        let ttl = Duration::from_secs(5);
        let runners = [
            runner(&store, &buses[0], ttl).await,
            runner(&store, &buses[1], ttl).await,
        ];
        let queries = [queries(&runners[0]), queries(&runners[1])];
        for n in 0..20 {
            // A command sent through one process, queried in the other
            // with its token: the follower waits for the holder.
            let receipt = buses[n % 2].dispatch(post("ann", "hi")).await.unwrap();
            let seen = queries[(n + 1) % 2]
                .query_after(SeenBy("ann".into()), receipt.token)
                .await
                .unwrap();
            assert!(seen.contains(&receipt.output), "{n}: {seen:?}");
        }
        let counts = [applied(&runners[0]), applied(&runners[1])];
        assert!(
            counts == [20, 0] || counts == [0, 20],
            "one runner applied each event once: {counts:?}"
        );
        let end = buses[0].position().await.unwrap();
        for runner in &runners {
            runner.wait_for(end, Duration::from_secs(10)).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_takes_over_from_a_stopped_holder_at_once_and_the_old_fence_refuses() {
        let store: Shared = Arc::new(MemoryStore::new());
        let bus = bus(&store);
        // Far longer than the wait below: the takeover comes from the
        // stopped holder's release, not from its lease's expiry.
        let ttl = Duration::from_secs(60);
        let mut runners = vec![
            runner(&store, &bus, ttl).await,
            runner(&store, &bus, ttl).await,
        ];
        let token = bus.dispatch(post("ann", "one")).await.unwrap().token;
        for runner in &runners {
            runner
                .wait_for(token, Duration::from_secs(10))
                .await
                .unwrap();
        }
        let holder = runners.iter().position(|r| applied(r) > 0).unwrap();
        let old = runners.remove(holder);
        let old_writes = old.read_model().store.clone();
        drop(old); // stops it, and gives the lease up
        let follower = &runners[0];
        let token = bus.dispatch(post("bob", "two")).await.unwrap().token;
        follower
            .wait_for(token, Duration::from_secs(5))
            .await
            .expect("the follower took over at once and applied");
        assert_eq!(applied(follower), 1, "it applied only what came after");
        let error = old_writes
            .put("seen/bob".into(), encode(&[]))
            .await
            .unwrap_err();
        assert!(error.is_conflict(), "{error}");
        assert_eq!(
            queries(follower).query(SeenBy("bob".into())).await.unwrap(),
            vec![2]
        );
    }
}

/// How the concurrent bus commits when the store says no: the log slot
/// taken by another process, a read gone stale, a store failure.
mod commit_outcomes {
    use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
    use std::sync::Arc;

    use scalekit::cqrs::{CommandBus, CommandError};
    use scalekit::store::{Check, Versioned, Write};
    use scalekit::testing::{FaultyStore, Operation};
    use scalekit::{Error, MemoryStore, Position, Store};

    use super::{post, Posts};

    const PASS: u8 = 0;
    /// Another process changes `posts/count` just before the next commit.
    const BUMP_ONCE: u8 = 1;
    /// Another process always appended first: the log slot is taken.
    const SLOT_TAKEN: u8 = 2;
    /// A store without conditional writes.
    const REFUSES: u8 = 3;

    #[derive(Debug, Default)]
    struct Contended {
        inner: MemoryStore<String, Vec<u8>>,
        mode: AtomicU8,
        commits: AtomicU32,
    }

    impl Store for Contended {
        type Key = String;
        type Value = Vec<u8>;

        async fn get(&self, key: &String) -> scalekit::Result<Option<Vec<u8>>> {
            self.inner.get(key).await
        }
        async fn put(&self, key: String, value: Vec<u8>) -> scalekit::Result<Position> {
            self.inner.put(key, value).await
        }
        async fn delete(&self, key: &String) -> scalekit::Result<Position> {
            self.inner.delete(key).await
        }
        async fn get_many(&self, keys: &[String]) -> scalekit::Result<Vec<Option<Vec<u8>>>> {
            self.inner.get_many(keys).await
        }
        async fn write_batch(
            &self,
            batch: Vec<Write<String, Vec<u8>>>,
        ) -> scalekit::Result<Position> {
            self.inner.write_batch(batch).await
        }
        async fn get_versioned(
            &self,
            key: &String,
        ) -> scalekit::Result<Option<Versioned<Vec<u8>>>> {
            self.inner.get_versioned(key).await
        }
        async fn write_if(
            &self,
            checks: Vec<Check<String>>,
            batch: Vec<Write<String, Vec<u8>>>,
        ) -> scalekit::Result<Position> {
            self.commits.fetch_add(1, Ordering::Relaxed);
            match self.mode.load(Ordering::Relaxed) {
                BUMP_ONCE => {
                    self.mode.store(PASS, Ordering::Relaxed);
                    let count = self.inner.get(&"posts/count".to_string()).await?;
                    self.inner
                        .put("posts/count".into(), count.unwrap_or_default())
                        .await?;
                }
                SLOT_TAKEN => {
                    // The slot check is the last one when events are appended.
                    let slot = checks.len() - 1;
                    return Err(Error::conflict(
                        format!("{:?}", checks[slot].key()),
                        slot,
                        None,
                    ));
                }
                REFUSES => {
                    return Err(Error::unsupported(
                        "test store",
                        "write_if",
                        "no conditional writes",
                    ))
                }
                _ => {}
            }
            self.inner.write_if(checks, batch).await
        }
    }

    fn bus(store: &Arc<Contended>) -> CommandBus<Arc<Contended>, String> {
        CommandBus::builder(Arc::clone(store), "posts")
            .handle(Posts)
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_whose_read_went_stale_runs_again_alone_at_once_and_commits() {
        let store = Arc::new(Contended::default());
        let bus = bus(&store);
        bus.dispatch(post("ann", "first")).await.unwrap();
        store.commits.store(0, Ordering::Relaxed);
        store.mode.store(BUMP_ONCE, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let receipt = bus.dispatch(post("bob", "second")).await.unwrap();
        assert_eq!(
            started.elapsed(),
            std::time::Duration::ZERO,
            "the first rerun does not wait"
        );
        assert_eq!(receipt.output, 2);
        assert_eq!(
            store.commits.load(Ordering::Relaxed),
            2,
            "the stale commit, then the rerun: no retry of the same stale batch"
        );
        assert_eq!(bus.position().await.unwrap(), Position::new(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_slot_always_taken_ends_in_a_conflict_after_bounded_retries() {
        let store = Arc::new(Contended::default());
        store.mode.store(SLOT_TAKEN, Ordering::Relaxed);
        let bus = bus(&store);
        let started = tokio::time::Instant::now();
        let error = bus.dispatch(post("ann", "hi")).await.unwrap_err();
        match &error {
            CommandError::Failed(error) => assert!(error.is_conflict(), "{error}"),
            other => panic!("not a conflict: {other}"),
        }
        // Reruns 2 to 10 wait 1, 2, 4 … 32, then 50 ms (at least half of
        // each): at least 106 ms in all, at most 213 ms.
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(106)
                && waited <= std::time::Duration::from_millis(213),
            "{waited:?}"
        );
        // 64 re-reads of the next number after the first try, for each of
        // the 1 + 10 runs of the handler.
        assert_eq!(store.commits.load(Ordering::Relaxed), 65 * 11);
    }

    #[tokio::test(start_paused = true)]
    async fn reruns_after_the_first_wait_the_back_off_steps_in_order() {
        let store = Arc::new(Contended::default());
        store.mode.store(SLOT_TAKEN, Ordering::Relaxed);
        let bus = CommandBus::builder(Arc::clone(&store), "posts")
            .handle(Posts)
            .max_conflict_retries(3)
            .build()
            .unwrap();
        let started = tokio::time::Instant::now();
        bus.dispatch(post("ann", "hi")).await.unwrap_err();
        assert_eq!(store.commits.load(Ordering::Relaxed), 65 * 4);
        // Rerun 1 at once, rerun 2 after half to all of 1 ms, rerun 3
        // after half to all of 2 ms (the paused clock rounds each up to
        // a whole millisecond): 1.5 to 3 ms.
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_micros(1_500)
                && waited <= std::time::Duration::from_millis(3),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_concurrent_bus_over_a_store_without_conditional_writes_says_to_use_single_process() {
        let store = Arc::new(Contended::default());
        store.mode.store(REFUSES, Ordering::Relaxed);
        let error = bus(&store).dispatch(post("ann", "hi")).await.unwrap_err();
        match &error {
            CommandError::Failed(error) => {
                assert!(
                    matches!(error.kind(), scalekit::ErrorKind::Unsupported { .. }),
                    "{error}"
                );
                assert!(error.to_string().contains("single_process"), "{error}");
            }
            other => panic!("not unsupported: {other}"),
        }
    }

    #[tokio::test]
    async fn a_store_failure_at_the_commit_is_the_stores_error() {
        let store = Arc::new(
            FaultyStore::builder(MemoryStore::<String, Vec<u8>>::new())
                .on(&[Operation::WriteIf])
                .build()
                .unwrap(),
        );
        let bus = CommandBus::<_, String>::builder(Arc::clone(&store), "posts")
            .handle(Posts)
            .build()
            .unwrap();
        store.set_failing(true);
        let error = bus.dispatch(post("ann", "hi")).await.unwrap_err();
        match &error {
            CommandError::Failed(error) => assert!(
                FaultyStore::<MemoryStore<String, Vec<u8>>>::is_injected(error),
                "{error}"
            ),
            other => panic!("not the store's failure: {other}"),
        }
        assert!(format!("{bus:?}").contains("queued: 0"), "{bus:?}");
        store.set_failing(false);
        assert_eq!(bus.dispatch(post("ann", "hi")).await.unwrap().output, 1);
    }
}
