//! CQRS, the command side: the specification of `scalekit::cqrs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use scalekit::cqrs::{Command, CommandBus, CommandContext, CommandError, CommandHandler, Recorded};
use scalekit::events::{Event, EventBus, StartFrom, TopicOptions};
use scalekit::testing::FaultyStore;
use scalekit::{ErrorKind, MemoryStore, Position};

type Writes = Arc<FaultyStore<MemoryStore<String, Vec<u8>>>>;

/// Creates a post; an empty text is rejected.
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
    assert_eq!(store.calls().write_batch, 2, "one batch per command");
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
    assert_eq!(store.calls().write_batch, 0);
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
    assert_eq!(store.calls().write_batch, 1);
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
