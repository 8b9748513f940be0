//! CQRS on the embedded default: `CreatePost` commands write posts to a
//! write model in SQLite and emit events; a timeline projection builds
//! per-user timelines; a `GetTimeline` query with the command's token sees
//! the new post.
//!
//! `cargo run --example cqrs`

use std::sync::Arc;
use std::time::{Duration, Instant};

use scalekit::cqrs::{
    Command, CommandBus, CommandContext, CommandError, CommandHandler, EventSource, Projection,
    Query, QueryBus, QueryHandler, Recorded,
};
use scalekit::store::SqliteStore;
use scalekit::{MemoryStore, Store};

/// Write a post. The request id makes a retried request harmless.
#[derive(Clone)]
struct CreatePost {
    author: String,
    text: String,
    request_id: String,
}

impl Command for CreatePost {
    type Output = u64; // the post's id
    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }
}

/// Posts are numbered; each is stored and announced by an event
/// `author:id:text`.
struct PostHandler;

impl CommandHandler<CreatePost, String> for PostHandler {
    async fn handle(
        &self,
        post: CreatePost,
        write_model: &mut CommandContext<'_, String>,
    ) -> Result<u64, CommandError> {
        if post.text.trim().is_empty() || post.text.len() > 280 {
            return Err(CommandError::Rejected(
                "a post has 1 to 280 characters".into(),
            ));
        }
        let id = write_model.get::<u64>("posts/last-id").await?.unwrap_or(0) + 1;
        write_model.put("posts/last-id", &id)?;
        write_model.put(format!("post/{id}"), &post.text)?;
        write_model.emit(format!("{}:{id}:{}", post.author, post.text));
        Ok(id)
    }
}

type Timelines = MemoryStore<String, Vec<u64>>;

/// A user's timeline: their posts' ids, newest last.
#[derive(Clone)]
struct GetTimeline(String);

impl Query for GetTimeline {
    type Output = Vec<u64>;
}

struct TimelineHandler(Projection<Timelines, String>);

impl QueryHandler<GetTimeline> for TimelineHandler {
    async fn handle(&self, query: GetTimeline) -> scalekit::Result<Vec<u64>> {
        Ok(self.0.read_model().get(&query.0).await?.unwrap_or_default())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile_dir()?;
    let write_model = SqliteStore::<String, Vec<u8>>::builder()
        .path(dir.join("posts.db"))
        .build()
        .await?;
    let commands = CommandBus::builder(Arc::new(write_model), "posts")
        .handle(PostHandler)
        .build()?;

    // The timeline projection: applies each post event to the author's
    // timeline (idempotently: an event applied twice changes nothing).
    let source: Arc<dyn EventSource<String>> = Arc::new(commands.clone());
    let timelines = Projection::start(
        "timelines",
        source,
        Timelines::new(),
        MemoryStore::<String, Vec<u8>>::new().into_dyn(),
        |recorded: Recorded<String>, timelines: Arc<Timelines>| async move {
            let mut parts = recorded.event.splitn(3, ':');
            let author = parts.next().unwrap_or_default().to_string();
            let id: u64 = parts.next().unwrap_or_default().parse()?;
            let mut timeline = timelines.get(&author).await?.unwrap_or_default();
            if !timeline.contains(&id) {
                timeline.push(id);
                timelines.put(author, timeline).await?;
            }
            Ok(())
        },
    )
    .await?;
    let queries = QueryBus::builder(timelines.clone())
        .handle(TimelineHandler(timelines.clone()))
        .wait_at_most(Duration::from_secs(1))
        .build()?;

    let receipt = commands
        .dispatch(CreatePost {
            author: "ann".into(),
            text: "Hello, timeline!".into(),
            request_id: "req-1".into(),
        })
        .await?;
    println!("post {} written; token {}", receipt.output, receipt.token);

    let started = Instant::now();
    let timeline = queries
        .query_after(GetTimeline("ann".into()), receipt.token)
        .await?;
    println!(
        "ann's timeline with the token: {timeline:?} (waited {:?} for the projection)",
        started.elapsed()
    );

    let again = commands
        .dispatch(CreatePost {
            author: "ann".into(),
            text: "Hello, timeline!".into(),
            request_id: "req-1".into(),
        })
        .await?;
    println!(
        "the same request again: post {} (repeated: {}), nothing written twice",
        again.output, again.repeated
    );

    match commands
        .dispatch(CreatePost {
            author: "bob".into(),
            text: "   ".into(),
            request_id: "req-2".into(),
        })
        .await
    {
        Err(CommandError::Rejected(reason)) => println!("an empty post is rejected: {reason}"),
        other => println!("unexpected: {other:?}"),
    }
    println!(
        "projection at {}, log at {}",
        timelines.position(),
        commands.position().await?
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// A fresh directory for the example's database.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("scalekit-cqrs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
