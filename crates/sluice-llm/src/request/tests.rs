use super::*;

fn chat_facts(body: &str) -> RequestFacts<'_> {
    parse(EndpointKind::ChatCompletions, body.as_bytes()).unwrap()
}

fn err(kind: EndpointKind, body: &str) -> RequestError {
    parse(kind, body.as_bytes()).unwrap_err()
}

#[test]
fn endpoint_kind_from_path() {
    use EndpointKind::*;
    assert_eq!(EndpointKind::from_path("/v1/chat/completions"), ChatCompletions);
    assert_eq!(EndpointKind::from_path("/v1/chat/completions/"), ChatCompletions);
    assert_eq!(EndpointKind::from_path("/openai/v1/chat/completions?x=1"), ChatCompletions);
    assert_eq!(EndpointKind::from_path("/v1/completions"), Completions);
    assert_eq!(EndpointKind::from_path("/v1/embeddings"), Embeddings);
    assert_eq!(EndpointKind::from_path("/v1/responses"), Other);
    assert!(!Embeddings.has_output());
    assert!(ChatCompletions.streams_usage() && !Other.streams_usage());
}

#[test]
fn chat_basic() {
    let f = chat_facts(
        r#"{
              "model": "gpt-4o-mini",
              "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!", "name": "alice"}
              ],
              "temperature": 0.2,
              "max_tokens": 100,
              "logit_bias": {"50256": -100}
            }"#,
    );
    assert_eq!(f.model, "gpt-4o-mini");
    assert!(matches!(f.model, Cow::Borrowed(_)));
    assert_eq!(f.max_tokens, Some(100));
    assert_eq!(f.max_completion_tokens, None);
    assert_eq!(f.n, 1);
    assert!(!f.stream && !f.include_usage);
    assert_eq!(f.texts, ["system", "You are a helpful assistant.", "user", "Hello!", "alice"]);
    // 2 messages * 3 + 3 priming + 1 name.
    assert_eq!(f.fixed_tokens, 10);
}

#[test]
fn chat_parts_tools_and_calls() {
    let f = chat_facts(
        r#"{
              "model": "gpt-4o",
              "n": 2,
              "max_tokens": 10,
              "max_completion_tokens": 50,
              "stream": true,
              "stream_options": {"include_usage": true},
              "messages": [
                {"role": "user", "content": [
                  {"type": "text", "text": "What is in this image?"},
                  {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                  {"id": "call_abc", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}
              ],
              "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
            }"#,
    );
    assert_eq!(f.n, 2);
    assert_eq!(f.max_completion_tokens, Some(50));
    assert!(f.stream && f.include_usage && !f.continuous_usage);
    assert_eq!(f.media_parts, 1);
    assert_eq!(f.fixed_tokens, 4 * 3 + 3);
    let texts: Vec<&str> = f.texts.iter().map(|t| &**t).collect();
    assert_eq!(
        texts,
        [
            "user",
            "What is in this image?",
            "assistant",
            "get_weather",
            "{\"city\":\"Paris\"}",
            "tool",
            "sunny",
            "call_abc",
            "assistant",
            "I can't.",
            r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]"#,
        ]
    );
}

#[test]
fn escaped_strings_are_decoded() {
    let f = chat_facts(r#"{"model":"m","messages":[{"role":"user","content":"a\nb \u00e9"}]}"#);
    assert_eq!(f.texts[1], "a\nb é");
    assert!(matches!(f.texts[1], Cow::Owned(_)));
    let owned = f.clone().into_owned();
    assert_eq!(owned, f);
}

#[test]
fn completions_prompt_shapes() {
    let p = |body: &'static str| parse(EndpointKind::Completions, body.as_bytes()).unwrap();
    let f = p(
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"best_of":3,"n":2}"#,
    );
    assert_eq!(f.texts, ["Say this is a test"]);
    assert_eq!(f.fixed_tokens, 0);
    assert_eq!(f.choices(), 3);
    let f = p(r#"{"model":"m","prompt":["a","b"],"suffix":"c"}"#);
    assert_eq!(f.texts, ["a", "b", "c"]);
    let f = p(r#"{"model":"m","prompt":[1212, 318, 257, 1332]}"#);
    assert!(f.texts.is_empty());
    assert_eq!(f.fixed_tokens, 4);
    let f = p(r#"{"model":"m","prompt":[[1,2,3],[4,5]]}"#);
    assert_eq!(f.fixed_tokens, 5);
    let f = p(r#"{"model":"m"}"#);
    assert!(f.texts.is_empty());
    let e = err(EndpointKind::Completions, r#"{"model":"m","prompt":[[1,"x"]]}"#);
    assert_eq!(e.param(), Some("prompt[0][1]"));
    let e = err(EndpointKind::Completions, r#"{"model":"m","prompt":[-1]}"#);
    assert_eq!(e.param(), Some("prompt[0]"));
    let e = err(EndpointKind::Completions, r#"{"model":"m","best_of":0}"#);
    assert_eq!(e.param(), Some("best_of"));
}

#[test]
fn embeddings_input_shapes() {
    let p = |body: &'static str| parse(EndpointKind::Embeddings, body.as_bytes()).unwrap();
    let f = p(
        r#"{"model":"text-embedding-3-small","input":"The food was delicious","encoding_format":"float"}"#,
    );
    assert_eq!(f.texts, ["The food was delicious"]);
    assert!(!f.kind.has_output());
    let f = p(r#"{"model":"m","input":["a","b"]}"#);
    assert_eq!(f.texts.len(), 2);
    let f = p(r#"{"model":"m","input":[[1,2],[3]]}"#);
    assert_eq!(f.fixed_tokens, 3);
    let e = err(EndpointKind::Embeddings, r#"{"model":"m"}"#);
    assert_eq!(e, RequestError::MissingField { param: "input" });
    assert_eq!(e.to_string(), "Missing required parameter: 'input'.");
    let e = err(EndpointKind::Embeddings, r#"{"model":"m","input":{"a":1}}"#);
    assert_eq!(e.param(), Some("input"));
}

#[test]
fn other_counts_whole_body() {
    let body = r#"{"model":"gpt-4.1","input":"hi","max_output_tokens":64,"stream":true}"#;
    let f = parse(EndpointKind::Other, body.as_bytes()).unwrap();
    assert_eq!(f.max_completion_tokens, Some(64));
    assert!(f.stream);
    assert_eq!(f.texts, [body]);
}

#[test]
fn model_is_required() {
    use EndpointKind::*;
    for kind in [ChatCompletions, Completions, Embeddings, Other] {
        assert_eq!(err(kind, r#"{"messages":[],"input":"x"}"#), RequestError::MissingModel);
        assert_eq!(
            err(kind, r#"{"model":"  ","messages":[],"input":"x"}"#),
            RequestError::MissingModel
        );
        assert_eq!(
            err(kind, r#"{"model":null,"messages":[],"input":"x"}"#),
            RequestError::MissingModel
        );
    }
    let e = err(ChatCompletions, r#"{"model":"m"}"#);
    assert_eq!(e.to_string(), "Missing required parameter: 'messages'.");
    assert_eq!(RequestError::MissingModel.param(), Some("model"));
}

#[test]
fn wrong_types_name_the_field() {
    let e = err(EndpointKind::ChatCompletions, r#"{"model":5,"messages":[]}"#);
    assert_eq!(e.param(), Some("model"));
    assert!(e.to_string().starts_with("Invalid type for 'model': invalid type: integer `5`"));
    let e = err(
        EndpointKind::ChatCompletions,
        r#"{"model":"m","messages":[{"role":"user","content":{"x":1}}]}"#,
    );
    assert_eq!(e.param(), Some("messages[0].content"));
    assert!(e.to_string().contains("a string or an array of content parts"), "{e}");
    assert!(!e.to_string().contains("line 1"), "{e}");
    let e = err(
        EndpointKind::ChatCompletions,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#,
    );
    assert_eq!(e.param(), Some("messages[0].content[0].text"));
    let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":"hi"}"#);
    assert_eq!(e.param(), Some("messages"));
    assert_eq!(
        e.to_string(),
        "Invalid type for 'messages': invalid type: string \"hi\", expected a sequence."
    );
    let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[{"role":"user"},7]}"#);
    assert_eq!(e.param(), Some("messages[1]"));
    assert!(e.to_string().contains("expected a message object"), "{e}");
    let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"max_tokens":"9"}"#);
    assert_eq!(e.param(), Some("max_tokens"));
    let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"max_tokens":-1}"#);
    assert_eq!(e.param(), Some("max_tokens"));
    let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"stream":"yes"}"#);
    assert_eq!(e.param(), Some("stream"));
    let e = err(
        EndpointKind::ChatCompletions,
        r#"{"model":"m","messages":[],"stream_options":{"include_usage":1}}"#,
    );
    assert_eq!(e.param(), Some("stream_options.include_usage"));
    let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"n":0}"#);
    assert_eq!(e.to_string(), "Invalid value for 'n': 0 is less than the minimum of 1.");
}

#[test]
fn malformed_bodies() {
    use EndpointKind::ChatCompletions as C;
    assert_eq!(err(C, ""), RequestError::Empty);
    assert_eq!(err(C, "  \n"), RequestError::Empty);
    assert!(matches!(err(C, "{"), RequestError::Malformed { .. }));
    assert!(matches!(err(C, "model=gpt-4o"), RequestError::Malformed { .. }));
    assert!(matches!(err(C, r#"{"model":"m","messages":[]} x"#), RequestError::Malformed { .. }));
    assert!(matches!(err(C, r#"{"model":"m","messages":[],}"#), RequestError::Malformed { .. }));
    assert_eq!(err(C, r#"["model"]"#), RequestError::NotAnObject);
    assert_eq!(err(C, "42"), RequestError::NotAnObject);
    let e = err(C, r#"{"model":"a","model":"b","messages":[]}"#);
    assert_eq!(e, RequestError::Invalid { detail: "duplicate field `model`".into() });
    assert!(err(C, "{").to_string().starts_with("We could not parse the JSON body"));
    // Deep nesting never overflows the stack: skipped in fields we do
    // not read, refused in fields we do.
    let deep = format!(
        r#"{{"model":"m","messages":[],"x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(parse(C, deep.as_bytes()).unwrap().model, "m");
    let deep = format!(
        r#"{{"model":"m","messages":[{{"content":[{{"text":{}1{}}}]}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(err(C, &deep).param(), Some("messages[0].content[0].text"));
    // Invalid UTF-8 inside a string.
    assert!(matches!(
        parse(C, b"{\"model\":\"\xff\",\"messages\":[]}").unwrap_err(),
        RequestError::Malformed { .. }
    ));
}

#[test]
fn unknown_fields_of_other_kinds_are_not_validated() {
    // An embeddings body with a strange `messages` is fine: not ours to judge.
    let f = parse(EndpointKind::Embeddings, br#"{"model":"m","input":"x","messages":7}"#).unwrap();
    assert_eq!(f.texts, ["x"]);
    // Continuous usage only counts when include_usage is on.
    let f = chat_facts(
        r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
    );
    assert!(f.continuous_usage);
    let f = chat_facts(
        r#"{"model":"m","messages":[],"stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
    );
    assert!(!f.continuous_usage && !f.include_usage);
}

#[test]
fn the_end_user_is_read_on_every_endpoint() {
    let bodies = [
        (EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"user":"alice"}"#),
        (EndpointKind::Completions, r#"{"model":"m","prompt":"x","user":"alice"}"#),
        (EndpointKind::Embeddings, r#"{"model":"m","input":"x","user":"alice"}"#),
        (EndpointKind::Other, r#"{"model":"m","input":"x","user":"alice"}"#),
    ];
    for (kind, body) in bodies {
        let f = parse(kind, body.as_bytes()).unwrap();
        assert_eq!(f.user.as_deref(), Some("alice"), "{kind:?}");
        // Borrowed from the body, not copied.
        assert!(matches!(f.user, Some(Cow::Borrowed(_))), "{kind:?}");
        assert_eq!(f.clone().into_owned().user.as_deref(), Some("alice"));
        // Absent or null: none.
        let without = body.replace(r#","user":"alice""#, "");
        assert_eq!(parse(kind, without.as_bytes()).unwrap().user, None, "{kind:?}");
        let null = body.replace(r#""alice""#, "null");
        assert_eq!(parse(kind, null.as_bytes()).unwrap().user, None, "{kind:?}");
        // Not a string: a 400 naming `user`.
        let e = err(kind, &body.replace(r#""alice""#, r#"{"id":7}"#));
        assert_eq!(e.param(), Some("user"), "{kind:?}");
        assert!(e.to_string().starts_with("Invalid type for 'user': invalid type: map"), "{e}");
    }
    let f = chat_facts(r#"{"model":"m","messages":[],"user":"al\u00efce"}"#);
    assert_eq!(f.user.as_deref(), Some("alïce"));
    assert_eq!(
        err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"user":7}"#).param(),
        Some("user")
    );
}
