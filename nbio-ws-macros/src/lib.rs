//! Procedural macros for nbio-ws. Use them through `nbio_ws::rpc_method`;
//! this crate is an implementation detail of nbio-ws and the code it
//! generates only compiles against nbio-ws.
extern crate proc_macro;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, Item, ItemFn, LitStr, Path, ReturnType, Token, Type};

/// The attribute's arguments: `"name"` then options (`crate = path`,
/// `errors(...)`, `example(...)`).
struct Args {
    name: LitStr,
    krate: Path,
    /// Documented error codes: `errors(-32602 = "text missing")`.
    errors: Vec<(syn::LitInt, bool, LitStr)>,
    /// Example calls: `example(params = r#"{..}"#, result = r#"..."#)`.
    examples: Vec<Example>,
}

/// One `example(name = "...", params = "<json>", result = "<json>")`.
struct Example {
    name: Option<LitStr>,
    params: LitStr,
    result: Option<LitStr>,
}

const USAGE: &str = "expected `#[rpc_method(\"method.name\")]`";
const OPTIONS: &str =
    "the options are `crate = \"path\"`, `errors(CODE = \"message\", ...)` and `example(params = \"<json>\", result = \"<json>\")`";

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("#[rpc_method] needs the JSON-RPC method name: {USAGE}"),
            ));
        }
        if !input.peek(LitStr) {
            let found: TokenStream2 = input.step(|c| match c.token_tree() {
                Some((tt, rest)) => Ok((tt.into_token_stream(), rest)),
                None => Err(c.error("unexpected end of input")),
            })?;
            return Err(syn::Error::new_spanned(
                found,
                format!("expected the method name as a string literal: {USAGE}"),
            ));
        }
        let name: LitStr = input.parse()?;
        validate_name(&name)?;

        let mut krate: Option<Path> = None;
        let mut errors: Option<Vec<(syn::LitInt, bool, LitStr)>> = None;
        let mut examples = Vec::new();
        while !input.is_empty() {
            if !input.peek(Token![,]) {
                return Err(input.error(format!("expected `,` after the method name; {OPTIONS}")));
            }
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            // `crate` is a keyword: parse any identifier.
            let key = input.call(syn::Ident::parse_any)?;
            if key == "errors" {
                if errors.is_some() {
                    return Err(syn::Error::new_spanned(
                        &key,
                        "the `errors` option is given more than once",
                    ));
                }
                errors = Some(parse_errors(input)?);
                continue;
            }
            if key == "example" {
                examples.push(parse_example(input)?);
                continue;
            }
            if key != "crate" {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!("unknown #[rpc_method] option `{key}`; {OPTIONS}"),
                ));
            }
            if krate.is_some() {
                return Err(syn::Error::new_spanned(
                    &key,
                    "the `crate` option is given more than once",
                ));
            }
            input.parse::<Token![=]>()?;
            krate = Some(if input.peek(LitStr) {
                let lit: LitStr = input.parse()?;
                lit.parse_with(Path::parse_mod_style).map_err(|_| {
                    syn::Error::new_spanned(
                        &lit,
                        "`crate` must name the nbio-ws crate by a path, such as `crate = \"my_nbio\"`",
                    )
                })?
            } else {
                input.call(Path::parse_mod_style).map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`crate` must name the nbio-ws crate by a path, such as `crate = \"my_nbio\"`",
                    )
                })?
            });
        }
        Ok(Args {
            name,
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::nbio_ws)),
            errors: errors.unwrap_or_default(),
            examples,
        })
    }
}

/// `errors(-32602 = "text missing", 4001 = "room full")`: integer codes
/// (an optional `-`), each with its message, each code once.
fn parse_errors(input: ParseStream) -> syn::Result<Vec<(syn::LitInt, bool, LitStr)>> {
    const FORM: &str =
        "expected `errors(CODE = \"message\", ...)`, such as `errors(-32602 = \"text missing\")`";
    let content;
    syn::parenthesized!(content in input);
    let mut out: Vec<(syn::LitInt, bool, LitStr)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while !content.is_empty() {
        let negative = content.parse::<Option<Token![-]>>()?.is_some();
        let code: syn::LitInt = content
            .parse()
            .map_err(|e| syn::Error::new(e.span(), FORM))?;
        let value = code.base10_parse::<i64>().map_err(|_| {
            syn::Error::new_spanned(
                &code,
                "an error code must be an integer that fits in 64 bits",
            )
        })?;
        let value = if negative { -value } else { value };
        if !seen.insert(value) {
            return Err(syn::Error::new_spanned(
                &code,
                format!("error code {value} is documented more than once"),
            ));
        }
        content
            .parse::<Token![=]>()
            .map_err(|e| syn::Error::new(e.span(), FORM))?;
        let message: LitStr = content
            .parse()
            .map_err(|e| syn::Error::new(e.span(), FORM))?;
        out.push((code, negative, message));
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    Ok(out)
}

/// `example(name = "...", params = "<json>", result = "<json>")`: the
/// JSON is checked here, at compile time.
fn parse_example(input: ParseStream) -> syn::Result<Example> {
    const FORM: &str = "expected `example(params = \"<json>\")`, optionally with `name = \"...\"` and `result = \"<json>\"`";
    let paren = input.cursor().span();
    let content;
    syn::parenthesized!(content in input);
    let (mut name, mut params, mut result) = (None, None, None);
    while !content.is_empty() {
        let key: syn::Ident = content
            .parse()
            .map_err(|e| syn::Error::new(e.span(), FORM))?;
        content
            .parse::<Token![=]>()
            .map_err(|e| syn::Error::new(e.span(), FORM))?;
        let value: LitStr = content
            .parse()
            .map_err(|e| syn::Error::new(e.span(), FORM))?;
        let slot = match key.to_string().as_str() {
            "name" => &mut name,
            "params" => &mut params,
            "result" => &mut result,
            other => {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!("unknown `example` field `{other}`; {FORM}"),
                ))
            }
        };
        if slot.is_some() {
            return Err(syn::Error::new_spanned(
                &key,
                format!("`{key}` is given more than once in this `example`"),
            ));
        }
        if key != "name" {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&value.value()) {
                return Err(syn::Error::new_spanned(
                    &value,
                    format!("the example's `{key}` is not valid JSON: {e}"),
                ));
            }
        }
        *slot = Some(value);
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    let Some(params) = params else {
        return Err(syn::Error::new(
            paren,
            format!("the example has no `params`: {FORM}"),
        ));
    };
    Ok(Example {
        name,
        params,
        result,
    })
}

fn validate_name(name: &LitStr) -> syn::Result<()> {
    let value = name.value();
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            name,
            "the method name must not be empty",
        ));
    }
    if value.starts_with("rpc.") {
        return Err(syn::Error::new_spanned(
            name,
            "method names that begin with `rpc.` are reserved by JSON-RPC 2.0 for the protocol's own extensions",
        ));
    }
    Ok(())
}

/// Registers a free function as a JSON-RPC method, at compile time.
///
/// ```ignore
/// use nbio_ws::{rpc_method, Client, Hub, Params, RpcError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Text { text: String }
///
/// #[derive(Serialize)]
/// struct Reply { echo: String, from: String }
///
/// // Arguments are extractors; the result is `Result<T, E>`...
/// #[rpc_method("self.reply")]
/// async fn self_reply(Params(p): Params<Text>, client: Client) -> Result<Reply, RpcError> {
///     if p.text.is_empty() {
///         return Err(RpcError::invalid_params("text must not be empty"));
///     }
///     Ok(Reply { echo: p.text, from: client.id().to_string() })
/// }
///
/// // ...or any serializable value; the function need not be async.
/// #[rpc_method("ping")]
/// fn ping() -> &'static str {
///     "pong"
/// }
///
/// // `()` (or no return type) answers `null`.
/// #[rpc_method("clients.count.log")]
/// fn log_count(_: Hub) {}
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Every annotated function linked into the binary is served:
/// nbio_ws::Server::builder().build()?.serve().await?;
/// # Ok(()) }
/// ```
///
/// # The method name
///
/// The attribute takes the JSON-RPC method name as a non-empty string
/// literal. Names beginning with `rpc.` are reserved by JSON-RPC 2.0 and
/// refused. A name may be registered only once per server:
/// `ServerBuilder::build` fails on a duplicate.
///
/// # Arguments
///
/// Every argument is an *extractor*: a type implementing
/// `nbio_ws::FromRequest`, built from the request before the function runs
/// — `Params<T>` (the `params`, deserialized into `T`), `Client` (the
/// caller), `Hub` (every client), `State<T>` (shared state given to the
/// builder), or your own. Extractors run in the order of the arguments; the
/// first that fails answers the request with its error (a `-32602` for
/// params that do not fit) and the function is not called. Any pattern can
/// bind an argument: `Params(p): Params<T>`, `_: Hub`, `mut client: Client`.
///
/// # Return type
///
/// Either `Result<T, E>` with `T: Serialize` and `E: Into<RpcError>` — `Ok`
/// becomes the `result`, `Err` the `error` — or any other `T: Serialize`,
/// always a success (`()`, or no return type, answers `null`). An alias of
/// `Result` (`type Answer<T> = Result<T, RpcError>`) counts as a `Result`,
/// and a `Result` is never serialized as a value: `Result<T, String>` is a
/// compile error (`String` is not an `RpcError`), not an `{"Ok": ..}`.
///
/// The function may be `async` or not. An `async` function's future must be
/// `Send`, as requests run on a multi-threaded runtime: do not hold an `Rc`
/// or a `RefCell` borrow across an `.await`.
///
/// # Registration
///
/// The function itself is left as written: it can still be called
/// directly. Next to it the attribute generates a hidden wrapper, inside an
/// anonymous `const _: () = { ... };` block so that nothing is added to your
/// namespace, and submits the wrapper to a registry built at link time (the
/// `inventory` crate). `ServerBuilder::build` serves every method in that
/// registry, whatever crate of the binary it was defined in, and
/// `nbio_ws::registered_methods()` lists them (name and
/// `module::path::function`); `ServerBuilder::registered_methods(false)`
/// turns that off for one server. A crate whose handlers are wanted must be
/// linked: if nothing else refers to it, add `use that_crate as _;`.
///
/// The attribute can be stacked to serve one function under several names.
///
/// # The `crate` option
///
/// The generated code refers to nbio-ws as `::nbio_ws`. If the dependency
/// is renamed in `Cargo.toml`, or re-exported by another crate, give its
/// path as a string or as a path:
///
/// ```ignore
/// // Cargo.toml: my_nbio = { package = "nbio-ws", version = "0.1" }
/// #[my_nbio::rpc_method("ping", crate = "my_nbio")]
/// fn ping() -> &'static str { "pong" }
///
/// #[my_nbio::rpc_method("pong", crate = my_nbio)]
/// fn pong() -> &'static str { "ping" }
/// ```
///
/// # Describing the method (OpenRPC)
///
/// With nbio-ws's `openrpc` cargo feature, the attribute also records a
/// description of the method for the server's OpenRPC document
/// (`rpc.discover`, `GET /openrpc.json`; see `nbio_ws::openrpc`): its name,
/// its doc comment (the first paragraph is the summary, the rest the
/// description), the JSON Schema of its params (from the `Params<T>`
/// argument, or an extractor implementing `nbio_ws::openrpc::DescribeParams`)
/// and of its result (the `Ok` type, or the returned type). Two
/// options add what the signature cannot say, and are accepted (and
/// checked) with or without the feature:
///
/// - `errors(CODE = "message", ...)`: the errors the method answers with,
///   such as `errors(-32602 = "text is empty", 4001 = "room is full")`;
/// - `example(params = "<json>", result = "<json>")`, any number of times:
///   an example call, with the `params` as a client sends them and,
///   optionally, the `result` and a `name = "..."`. The JSON is checked at
///   compile time.
///
/// ```ignore
/// /// Echoes the text back to the caller.
/// #[rpc_method(
///     "self.reply",
///     errors(-32602 = "text is empty"),
///     example(params = r#"{"text": "hi"}"#, result = r#"{"echo": "hi"}"#),
/// )]
/// fn self_reply(Params(p): Params<Text>) -> Result<Reply, RpcError> { ... }
/// ```
///
/// Without the feature, nothing of this is compiled.
///
/// # Compile errors
///
/// Wrong uses are refused at compile time, with the error on the offending
/// code:
///
/// - a missing, non-string or empty name, a reserved `rpc.` name, an
///   unknown option, an error code given twice, an example whose JSON does
///   not parse;
/// - anything but a free function: a struct, a method taking `self`;
/// - a generic function (type, const or lifetime parameters, or a `where`
///   clause), an `impl Trait` argument, an `unsafe`, `extern` or variadic
///   function;
/// - an argument whose type is not an extractor (`FromRequest` is not
///   implemented), reported on that type;
/// - a return type that is not serializable, or an error type that does
///   not convert into `RpcError`, reported on the return type;
/// - an `async` function whose future is not `Send`, reported on the
///   function's signature.
///
/// Associated functions (in an `impl` block) cannot be annotated, even
/// without `self`: wrap them in a free function.
#[proc_macro_attribute]
pub fn rpc_method(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_attribute(attr.into(), item.into()).into()
}

/// The whole expansion, on `proc_macro2` tokens (so that it can be tested).
fn expand_attribute(attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let args = syn::parse2::<Args>(attr);
    let parsed = syn::parse2::<Item>(item.clone());
    let out = match (args, parsed) {
        (Ok(args), Ok(Item::Fn(func))) => expand(&args, func),
        // The item is emitted as it was in every error case, so that the
        // error is not followed by others about it going missing.
        (Err(e), _) => Err(e),
        (Ok(_), Ok(other)) => Err(syn::Error::new_spanned(
            other,
            "#[rpc_method] applies to a free function (`fn` or `async fn`)",
        )),
        (Ok(_), Err(e)) => Err(e),
    };
    out.unwrap_or_else(|e| {
        let e = e.to_compile_error();
        quote!(#item #e)
    })
}

/// Checks the signature, then emits the function, the wrapper and the
/// registration.
fn expand(args: &Args, func: ItemFn) -> syn::Result<TokenStream2> {
    check_signature(&func)?;
    Ok(generate(args, &func))
}

fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if let Some(param) = sig.generics.params.first() {
        let what = match param {
            GenericParam::Lifetime(_) => "lifetime parameters",
            GenericParam::Type(_) => "type parameters",
            GenericParam::Const(_) => "const parameters",
        };
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!(
                "an #[rpc_method] function cannot have {what}: the method table needs one concrete function"
            ),
        ));
    }
    if let Some(wc) = &sig.generics.where_clause {
        return Err(syn::Error::new_spanned(
            wc,
            "an #[rpc_method] function cannot have a `where` clause",
        ));
    }
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            u,
            "an #[rpc_method] function cannot be `unsafe`: nothing could uphold its safety contract when a request calls it",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "an #[rpc_method] function cannot have an `extern` ABI",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            "an #[rpc_method] function cannot be variadic",
        ));
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "#[rpc_method] applies to free functions, not to methods taking `self`: \
                     call the method from a free function",
                ))
            }
            FnArg::Typed(pt) => {
                if let Some(it) = find_impl_trait(&pt.ty) {
                    return Err(syn::Error::new_spanned(
                        it,
                        "`impl Trait` is not allowed in the arguments of an #[rpc_method] function: \
                         each argument must be a concrete extractor type (one implementing `FromRequest`)",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn generate(args: &Args, func: &ItemFn) -> TokenStream2 {
    let sig = &func.sig;
    let krate = &args.krate;
    let name = &args.name;
    let ident = &sig.ident;
    let wrapper = format_ident!("__nbio_ws_rpc_{}", ident.unraw());
    let location = format!("::{}", ident.unraw());

    // Generated code is located at the user's code it stands for (so that
    // type errors point there) but keeps the macro's hygiene (so that lints
    // treat it as generated).
    let at = |span: Span| Span::call_site().located_at(span);

    let mut extracts = Vec::new();
    let mut call_args = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = arg else {
            unreachable!("receivers are refused by check_signature")
        };
        let ty = &pt.ty;
        let var = format_ident!("__nbio_ws_arg{}", i);
        extracts.push(quote_spanned! {at(ty.span())=>
            let #var = match #krate::__private::extract::<#ty>(&__nbio_ws_ctx) {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => {
                    return ::std::boxed::Box::pin(::core::future::ready(
                        ::core::result::Result::Err(e),
                    ));
                }
            };
        });
        call_args.push(var);
    }

    let call = if sig.asyncness.is_some() {
        quote! { #ident(#(#call_args),*).await }
    } else {
        quote! { #ident(#(#call_args),*) }
    };
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    // Result or plain value, picked by autoref: the first trait matches
    // `Result<T, E>` by value, the second anything else through one
    // more reference. The traits are local and unbounded so that a
    // `Result` (or an alias of it) is never serialized as `{"Ok": ..}`, and
    // a failing bound is reported on `convert` — that is, on the return type —
    // as a plain "`X: Serialize` is not satisfied".
    let convert = quote_spanned! {at(ret_span)=>
        (&__nbio_ws_out).__nbio_ws_kind().convert(__nbio_ws_out)
    };
    // The coercion to a `Send` future happens here: point at the signature.
    let sig_span = sig.asyncness.map_or(sig.fn_token.span, |a| a.span);
    let boxed = quote_spanned! {at(sig_span)=>
        ::std::boxed::Box::pin(async move {
            let __nbio_ws_out = #call;
            #convert
        })
    };

    let openrpc = openrpc_description(args, func);

    quote! {
        #func

        const _: () = {
            trait __NbioWsResultKind {
                #[inline]
                fn __nbio_ws_kind(&self) -> #krate::__private::ResultTag {
                    #krate::__private::ResultTag
                }
            }
            impl<T, E> __NbioWsResultKind for ::core::result::Result<T, E> {}

            trait __NbioWsSerializeKind {
                #[inline]
                fn __nbio_ws_kind(&self) -> #krate::__private::SerializeTag {
                    #krate::__private::SerializeTag
                }
            }
            impl<T: ?::core::marker::Sized> __NbioWsSerializeKind for &T {}

            #[doc(hidden)]
            #[allow(non_snake_case, unused_variables)]
            fn #wrapper(
                __nbio_ws_ctx: #krate::__private::RequestContext,
            ) -> #krate::__private::BoxFuture<#krate::__private::HandlerResult> {
                #(#extracts)*
                #boxed
            }

            #krate::__private::inventory::submit! {
                #krate::__private::MethodDef::new(
                    #name,
                    #wrapper,
                    ::core::concat!(::core::module_path!(), #location),
                )
            }

            #openrpc
        };
    }
}

/// The method's description for OpenRPC: a call to nbio-ws's
/// `__nbio_ws_openrpc_method!`, which expands to nothing unless nbio-ws is
/// built with its `openrpc` feature (so the user's crate need not know of
/// the feature).
fn openrpc_description(args: &Args, func: &ItemFn) -> TokenStream2 {
    let sig = &func.sig;
    let krate = &args.krate;
    let name = &args.name;
    let location = format!("::{}", sig.ident.unraw());
    let (summary, description) = doc_text(&func.attrs);

    let arg_entries = sig.inputs.iter().filter_map(|arg| match arg {
        FnArg::Typed(pt) => {
            let ty = &pt.ty;
            let names = positional_names(&pt.pat);
            Some(quote!((#ty, [#(#names),*])))
        }
        FnArg::Receiver(_) => None,
    });
    // An `impl Trait` return type cannot be named: its result is not
    // described.
    let result = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) if find_impl_trait(ty).is_some() => quote!(),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let errors = args.errors.iter().map(|(code, negative, message)| {
        let minus = negative.then(|| quote!(-));
        quote!((#minus #code, #message))
    });
    let some = |lit: &Option<LitStr>| match lit {
        Some(l) => quote!(::core::option::Option::Some(#l)),
        None => quote!(::core::option::Option::None),
    };
    let examples = args.examples.iter().map(|e| {
        let ex_name = some(&e.name);
        let params = &e.params;
        let ex_result = some(&e.result);
        quote!((#ex_name, #params, #ex_result))
    });
    quote! {
        #krate::__nbio_ws_openrpc_method! {
            name: #name,
            location: ::core::concat!(::core::module_path!(), #location),
            summary: #summary,
            description: #description,
            args: [#(#arg_entries),*],
            result: [#result],
            errors: [#(#errors),*],
            examples: [#(#examples),*],
        }
    }
}

/// The doc comment of `attrs`: its first paragraph (lines joined by
/// spaces), then the rest (empty when there is none).
fn doc_text(attrs: &[syn::Attribute]) -> (String, String) {
    let mut lines: Vec<String> = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                // `split`, not `lines`: an empty `///` line is a paragraph break.
                for line in s.value().split('\n') {
                    lines.push(line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned());
                }
            }
        }
    }
    let mut rest = lines.iter().skip_while(|l| l.trim().is_empty());
    let summary: Vec<&str> = rest
        .by_ref()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim())
        .collect();
    let description: Vec<&str> = rest.map(String::as_str).collect();
    (
        summary.join(" "),
        description.join("\n").trim_matches('\n').to_owned(),
    )
}

/// The names bound by a positional params pattern, `Params((a, b))` or
/// `Params([x, y])`: one per element (`""` for `_` and other patterns), or
/// none for any other pattern.
fn positional_names(pat: &syn::Pat) -> Vec<String> {
    let syn::Pat::TupleStruct(ts) = pat else {
        return Vec::new();
    };
    let Some(inner) = ts.elems.first().filter(|_| ts.elems.len() == 1) else {
        return Vec::new();
    };
    let elems = match inner {
        syn::Pat::Tuple(t) => &t.elems,
        syn::Pat::Slice(s) => &s.elems,
        _ => return Vec::new(),
    };
    if elems.iter().any(|p| matches!(p, syn::Pat::Rest(_))) {
        return Vec::new();
    }
    elems
        .iter()
        .map(|p| match p {
            syn::Pat::Ident(i) => i
                .ident
                .unraw()
                .to_string()
                .trim_start_matches('_')
                .to_owned(),
            _ => String::new(),
        })
        .collect()
}

/// The first `impl Trait` inside `ty`, if any.
fn find_impl_trait(ty: &Type) -> Option<&syn::TypeImplTrait> {
    struct Finder<'a>(Option<&'a syn::TypeImplTrait>);
    impl<'a> syn::visit::Visit<'a> for Finder<'a> {
        fn visit_type_impl_trait(&mut self, it: &'a syn::TypeImplTrait) {
            self.0.get_or_insert(it);
        }
    }
    let mut f = Finder(None);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(attr: TokenStream2) -> syn::Result<Args> {
        syn::parse2::<Args>(attr)
    }

    fn args_err(attr: TokenStream2) -> String {
        match args(attr) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn signature_err(item: TokenStream2) -> String {
        let func: ItemFn = syn::parse2(item).unwrap();
        check_signature(&func).unwrap_err().to_string()
    }

    fn path(p: &Path) -> String {
        p.to_token_stream().to_string().replace(' ', "")
    }

    #[test]
    fn attribute_arguments() {
        let a = args(quote!("chat.send")).unwrap();
        assert_eq!(a.name.value(), "chat.send");
        assert_eq!(path(&a.krate), "::nbio_ws");

        let a = args(quote!("x", crate = "my_nbio")).unwrap();
        assert_eq!(path(&a.krate), "my_nbio");
        let a = args(quote!("x", crate = ::re::export,)).unwrap();
        assert_eq!(path(&a.krate), "::re::export");
        let a = args(quote!("x", crate = crate)).unwrap();
        assert_eq!(path(&a.krate), "crate");
    }

    #[test]
    fn attribute_errors() {
        assert!(args_err(quote!()).contains("needs the JSON-RPC method name"));
        assert!(args_err(quote!(ping)).contains("string literal"));
        assert!(args_err(quote!(b"ping")).contains("string literal"));
        assert!(args_err(quote!("")).contains("must not be empty"));
        assert!(args_err(quote!("rpc.x")).contains("reserved"));
        assert!(args_err(quote!("x", foo = "y")).contains("unknown #[rpc_method] option `foo`"));
        assert!(args_err(quote!("x", crate = "a", crate = "b")).contains("more than once"));
        assert!(args_err(quote!("x", crate = "a b")).contains("must name the nbio-ws crate"));
        assert!(args_err(quote!("x", crate = 1)).contains("must name the nbio-ws crate"));
        assert!(args_err(quote!("x" "y")).contains("expected `,`"));
        assert!(
            args_err(quote!("x", errors(1 = "a", 1 = "b"))).contains("documented more than once")
        );
        assert!(args_err(quote!("x", errors(-1 = "a"), errors(2 = "b"))).contains("more than once"));
        assert!(args_err(quote!("x", errors(a = "b"))).contains("expected `errors(CODE"));
        assert!(args_err(quote!("x", errors(1 = 2))).contains("expected `errors(CODE"));
        assert!(args_err(quote!("x", example(result = "1"))).contains("has no `params`"));
        assert!(args_err(quote!("x", example(params = "{"))).contains("not valid JSON"));
        assert!(
            args_err(quote!("x", example(params = "1", params = "2"))).contains("more than once")
        );
        assert!(
            args_err(quote!("x", example(param = "1"))).contains("unknown `example` field `param`")
        );
    }

    #[test]
    fn documentation_options() {
        let a = args(quote!(
            "x",
            errors(-32602 = "bad", 4001 = "full",),
            example(params = "[1]"),
            example(name = "n", params = r#"{"a": 1}"#, result = "true"),
        ))
        .unwrap();
        let codes: Vec<(String, bool, String)> = a
            .errors
            .iter()
            .map(|(c, neg, m)| (c.to_string(), *neg, m.value()))
            .collect();
        assert_eq!(
            codes,
            [
                ("32602".to_owned(), true, "bad".to_owned()),
                ("4001".to_owned(), false, "full".to_owned())
            ]
        );
        assert_eq!(a.examples.len(), 2);
        assert_eq!(a.examples[1].name.as_ref().unwrap().value(), "n");
        assert_eq!(a.examples[1].result.as_ref().unwrap().value(), "true");
    }

    #[test]
    fn doc_comments_and_positional_names() {
        let func: ItemFn = syn::parse2(quote!(
            /// First line,
            /// second line.
            ///
            /// More.
            ///
            /// Even more.
            fn f(
                Params((a, _b, _)): Params<(u8, u8, u8)>,
                _: Hub,
                Params([x, y]): Params<[u8; 2]>,
                p: Params<u8>,
            ) {
            }
        ))
        .unwrap();
        let (summary, description) = doc_text(&func.attrs);
        assert_eq!(summary, "First line, second line.");
        assert_eq!(description, "More.\n\nEven more.");
        let names: Vec<Vec<String>> = func
            .sig
            .inputs
            .iter()
            .map(|a| match a {
                FnArg::Typed(pt) => positional_names(&pt.pat),
                FnArg::Receiver(_) => unreachable!(),
            })
            .collect();
        assert_eq!(names, [vec!["a", "b", ""], vec![], vec!["x", "y"], vec![]]);
        assert_eq!(doc_text(&[]), (String::new(), String::new()));
    }

    #[test]
    fn signature_errors() {
        assert!(signature_err(quote!(
            fn f<T>(_: T) {}
        ))
        .contains("type parameters"));
        assert!(signature_err(quote!(
            fn f<'a>() {}
        ))
        .contains("lifetime parameters"));
        assert!(signature_err(quote!(
            fn f<const N: usize>() {}
        ))
        .contains("const parameters"));
        assert!(signature_err(quote!(
            fn f()
            where
                u8: Copy,
            {
            }
        ))
        .contains("`where` clause"));
        assert!(signature_err(quote!(
            unsafe fn f() {}
        ))
        .contains("`unsafe`"));
        assert!(signature_err(quote!(
            extern "C" fn f() {}
        ))
        .contains("`extern` ABI"));
        assert!(signature_err(quote!(
            fn f(a: u8, ...) {}
        ))
        .contains("variadic"));
        assert!(signature_err(quote!(
            fn f(&self) {}
        ))
        .contains("taking `self`"));
        assert!(signature_err(quote!(
            fn f(mut self: Box<Self>) {}
        ))
        .contains("taking `self`"));
        assert!(signature_err(quote!(
            fn f(x: impl A) {}
        ))
        .contains("`impl Trait`"));
        assert!(signature_err(quote!(
            fn f(x: Vec<impl A>) {}
        ))
        .contains("`impl Trait`"));
    }

    #[test]
    fn accepted_signatures() {
        for item in [
            quote!(
                fn f() {}
            ),
            quote!(
                const fn f() -> u8 {
                    1
                }
            ),
            quote!(
                async fn f(Params(p): Params<P>, _: Hub, mut c: Client) -> Result<u8, E> {
                    1
                }
            ),
            quote!(
                pub(crate) fn f(x: Box<dyn Fn() -> u8>) -> impl Serialize {
                    1
                }
            ),
        ] {
            let func: ItemFn = syn::parse2(item.clone()).unwrap();
            check_signature(&func).unwrap_or_else(|e| panic!("{item}: {e}"));
        }
    }

    #[test]
    fn expansion() {
        let out = expand_attribute(
            quote!("math.add", crate = "my_nbio"),
            quote!(
                async fn r#add(Params((a, b)): Params<(i64, i64)>, _: Hub) -> i64 {
                    a + b
                }
            ),
        );
        // Valid Rust: the function, then one anonymous const block.
        let file: syn::File = syn::parse2(out.clone()).unwrap();
        assert!(matches!(&file.items[..], [Item::Fn(_), Item::Const(c)] if c.ident == "_"));
        let text = out.to_string();
        assert!(text.contains("fn __nbio_ws_rpc_add"), "{text}");
        assert!(text.contains("my_nbio :: __private :: extract :: < Params < (i64 , i64) > >"));
        assert!(text.contains("my_nbio :: __private :: extract :: < Hub >"));
        assert!(text.contains("r#add (__nbio_ws_arg0 , __nbio_ws_arg1) . await"));
        assert!(text.contains("\"::add\""), "location without r#: {text}");
        assert!(!text.contains(":: nbio_ws"), "{text}");
    }

    #[test]
    fn errors_keep_the_item() {
        let item = quote!(
            fn ping() -> u8 {
                1
            }
        );
        let out = expand_attribute(quote!(), item.clone()).to_string();
        assert!(out.starts_with(&item.to_string()), "{out}");
        assert!(out.contains("compile_error"), "{out}");

        let out = expand_attribute(
            quote!("x"),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(out.starts_with("struct S ;"), "{out}");
        assert!(out.contains("applies to a free function"), "{out}");
    }
}
