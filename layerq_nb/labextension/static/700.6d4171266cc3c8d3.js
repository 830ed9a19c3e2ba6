"use strict";(self.rspackChunklayerq_nb=self.rspackChunklayerq_nb||[]).push([[700],{646(e,t,r){var a=r(601),n=r.n(a),o=r(314),l=(r.n(o))()(n());l.push([e.id,`/* The launcher cards of the LayerQ tutorials: wider than the default, with the one line and the time. */
.jp-LauncherCard[data-category='LayerQ tutorials'] {
  width: 232px;
}

.jp-LauncherCard[data-category='LayerQ tutorials'] .jp-LauncherCard-icon {
  height: 48px;
}

.jp-LauncherCard[data-category='LayerQ tutorials'] .jp-LauncherCard-label p {
  white-space: pre-line;
  text-align: left;
  line-height: 1.3em;
}

/* The health panel */
.lq-health {
  padding: 16px 24px;
  overflow: auto;
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
}

.lq-health table {
  border-collapse: collapse;
  margin: 8px 0 16px;
}

.lq-health th,
.lq-health td {
  text-align: left;
  vertical-align: top;
  padding: 4px 10px;
  border-bottom: 1px solid var(--jp-border-color2);
}

.lq-health-fix {
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
}

.lq-health-row.lq-ok .lq-health-status,
.lq-health-summary.lq-ok {
  color: var(--jp-success-color1);
}

.lq-health-row.lq-info .lq-health-status {
  color: var(--jp-info-color1);
}

.lq-health-row.lq-problem .lq-health-status,
.lq-health-summary.lq-problem {
  color: var(--jp-error-color1);
}
`,""]),r.d(t,{},{A:l})},314(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",a=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),a&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),a&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,a,n,o){"string"==typeof e&&(e=[[null,e,void 0]]);var l={};if(a)for(var i=0;i<this.length;i++){var c=this[i][0];null!=c&&(l[c]=!0)}for(var s=0;s<e.length;s++){var u=[].concat(e[s]);a&&l[u[0]]||(void 0!==o&&(void 0===u[5]||(u[1]="@layer".concat(u[5].length>0?" ".concat(u[5]):""," {").concat(u[1],"}")),u[5]=o),r&&(u[2]&&(u[1]="@media ".concat(u[2]," {").concat(u[1],"}")),u[2]=r),n&&(u[4]?(u[1]="@supports (".concat(u[4],") {").concat(u[1],"}"),u[4]=n):u[4]="".concat(n)),t.push(u))}},t}},601(e){e.exports=function(e){return e[1]}},72(e){var t=[];function r(e){for(var r=-1,a=0;a<t.length;a++)if(t[a].identifier===e){r=a;break}return r}function a(e,a){for(var n={},o=[],l=0;l<e.length;l++){var i=e[l],c=a.base?i[0]+a.base:i[0],s=n[c]||0,u="".concat(c," ").concat(s);n[c]=s+1;var p=r(u),h={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==p)t[p].references++,t[p].updater(h);else{var d=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(h,a);a.byIndex=l,t.splice(l,0,{identifier:u,updater:d,references:1})}o.push(u)}return o}e.exports=function(e,n){var o=a(e=e||[],n=n||{});return function(e){e=e||[];for(var l=0;l<o.length;l++){var i=r(o[l]);t[i].references--}for(var c=a(e,n),s=0;s<o.length;s++){var u=r(o[s]);0===t[u].references&&(t[u].updater(),t.splice(u,1))}o=c}}},659(e){var t={};e.exports=function(e,r){var a=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!a)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");a.appendChild(r)}},540(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},56(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},206(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var a,n,o;a="",r.supports&&(a+="@supports (".concat(r.supports,") {")),r.media&&(a+="@media ".concat(r.media," {")),(n=void 0!==r.layer)&&(a+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),a+=r.css,n&&(a+="}"),r.media&&(a+="}"),r.supports&&(a+="}"),(o=r.sourceMap)&&"u">typeof btoa&&(a+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(o))))," */")),e.styleTagTransform(a,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},959(e,t,r){var a=r(72),n=r.n(a),o=r(206),l=r.n(o),i=r(659),c=r.n(i),s=r(56),u=r.n(s),p=r(540),h=r.n(p),d=r(113),f=r.n(d),v=r(646),m={};m.styleTagTransform=f(),m.setAttributes=u(),m.insert=c().bind(null,"head"),m.domAPI=l(),m.insertStyleElement=h(),n()(v.A,m),v.A&&v.A.locals&&v.A.locals}}]);